"""Named Molmo2 sizes: the published 4B and 8B, and the toy `tiny` and mid-size `small` for tests and CPU benchmarks."""

from __future__ import annotations

import dataclasses
from typing import Any

from stts_jax.errors import ConfigError
from stts_jax.models.config import AdapterConfig, Molmo2Config, TextConfig, VisionConfig

_SHARED_VISION = VisionConfig()  # SigLIP2 So400m/14 at 378px, first 25 of 27 blocks; identical in 4B and 8B


def _molmo2(text_hidden: int, text_mlp: int, rope_theta: float) -> Molmo2Config:
    return Molmo2Config(
        vision=_SHARED_VISION,
        adapter=AdapterConfig(vision_feature_layers=(24, 18), intermediate_size=text_mlp, text_hidden_size=text_hidden),
        text=TextConfig(hidden_size=text_hidden, intermediate_size=text_mlp, rope_theta=rope_theta),
    )


def _tiny() -> Molmo2Config:
    """A few-layer model for tests: every structural feature of the big ones at toy widths."""
    return Molmo2Config(
        vision=VisionConfig(
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=5,
            num_attention_heads=4,
            num_key_value_heads=4,
            head_dim=8,
            image_size=(42, 42),
            patch_size=6,
        ),
        adapter=AdapterConfig(
            vision_feature_layers=(-1, -3),
            hidden_size=32,
            num_attention_heads=4,
            num_key_value_heads=4,
            head_dim=8,
            intermediate_size=48,
            text_hidden_size=64,
        ),
        text=TextConfig(
            hidden_size=64,
            num_attention_heads=4,
            num_key_value_heads=2,
            head_dim=16,
            vocab_size=512,
            additional_vocab_size=16,
            num_hidden_layers=3,
            intermediate_size=128,
            max_position_embeddings=4096,
            rope_theta=10_000.0,
        ),
        image_start_token_id=512,
        image_end_token_id=513,
        image_patch_id=514,
        image_col_id=515,
        low_res_image_start_token_id=516,
        frame_start_token_id=519,
        frame_end_token_id=520,
    )


def _small() -> Molmo2Config:
    """A mid-size model for CPU benchmarks and quick experiments: 224 px frames (16x16 patches of 14,
    36 windows per frame), a 12-block ViT of width 384 and an 8-layer LLM of width 512."""
    tiny = _tiny()
    return tiny.replace(
        vision=VisionConfig(
            hidden_size=384,
            intermediate_size=1536,
            num_hidden_layers=12,
            num_attention_heads=6,
            num_key_value_heads=6,
            head_dim=64,
            image_size=(224, 224),
            patch_size=14,
        ),
        adapter=AdapterConfig(
            vision_feature_layers=(-1, -4),
            hidden_size=384,
            num_attention_heads=6,
            num_key_value_heads=6,
            head_dim=64,
            intermediate_size=1536,
            text_hidden_size=512,
        ),
        text=dataclasses.replace(
            tiny.text,
            hidden_size=512,
            num_attention_heads=8,
            num_key_value_heads=4,
            head_dim=64,
            num_hidden_layers=8,
            intermediate_size=1536,
        ),
    )


VARIANTS = {
    "tiny": _tiny,
    "small": _small,
    # Published sizes: Qwen3-4B / Qwen3-8B decoders (allenai/Molmo2-4B, allenai/Molmo2-8B config.json).
    "molmo2-4b": lambda: _molmo2(text_hidden=2560, text_mlp=9728, rope_theta=5_000_000.0),
    "molmo2-8b": lambda: _molmo2(text_hidden=4096, text_mlp=12288, rope_theta=1_000_000.0),
}


def get_config(variant: str, **runtime: Any) -> Molmo2Config:
    """A named variant (`tiny`, `small`, `molmo2-4b`, `molmo2-8b`) with run-time overrides (`dtype=...`)."""
    if variant not in VARIANTS:
        raise ConfigError(f"Unknown model variant {variant!r}; choose one of {sorted(VARIANTS)}.")
    return VARIANTS[variant]().replace(**runtime).validate()
