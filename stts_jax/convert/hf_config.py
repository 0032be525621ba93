"""Molmo2's Hugging Face `config.json` <-> `Molmo2Config` (HF-native keys, and the released checkpoints' legacy
ones on reading)."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

from stts_jax.errors import ConfigError
from stts_jax.models.config import AdapterConfig, Molmo2Config, TextConfig, VisionConfig


def config_from_hf(d: Mapping[str, Any], **runtime: Any) -> Molmo2Config:
    """Builds the config from a `config.json` dict (HF native or the released checkpoints' legacy keys)."""
    if d.get("model_type") != "molmo2":
        raise ConfigError(
            f"config.json has model_type {d.get('model_type')!r}, not 'molmo2': this is not a Molmo2 "
            "checkpoint. Point at a directory written by Molmo2ForConditionalGeneration.save_pretrained."
        )
    vd = dict(d.get("vision_config") or d.get("vit_config") or {})
    ad = dict(d.get("adapter_config") or {})
    td = dict(d.get("text_config") or {})

    vision = VisionConfig(
        hidden_size=vd.get("hidden_size", 1152),
        intermediate_size=vd.get("intermediate_size", 4304),
        num_hidden_layers=vd.get("num_hidden_layers", 25),
        num_attention_heads=vd.get("num_attention_heads", 16),
        num_key_value_heads=vd.get("num_key_value_heads", 16),
        head_dim=vd.get("head_dim", 72),
        hidden_act=vd.get("hidden_act", "gelu_pytorch_tanh"),
        layer_norm_eps=vd.get("layer_norm_eps", 1e-6),
        image_size=tuple(vd.get("image_size") or vd.get("image_default_input_size") or (378, 378)),
        patch_size=vd.get("patch_size", vd.get("image_patch_size", 14)),
        num_channels=vd.get("num_channels", 3),
        attention_bias=vd.get("attention_bias", True),
    )
    layers = tuple(ad.get("vision_feature_layer") or ad.get("vit_layers") or (24, 18))
    # Keep only the blocks the adapter reads (transformers does the same for the released
    # checkpoints, which declare 27 blocks and ship 25); feature layers become non-negative.
    declared = vision.num_hidden_layers
    if not all(-declared <= layer < declared for layer in layers):
        raise ConfigError(f"adapter vision_feature_layer {list(layers)} must index the {declared} ViT layers.")
    layers = tuple(layer % declared for layer in layers)
    vision = dataclasses.replace(vision, num_hidden_layers=max(layers) + 1)
    adapter = AdapterConfig(
        vision_feature_layers=layers,
        hidden_size=ad.get("hidden_size", 1152),
        num_attention_heads=ad.get("num_attention_heads", 16),
        num_key_value_heads=ad.get("num_key_value_heads", 16),
        head_dim=ad.get("head_dim", 72),
        attention_bias=ad.get("attention_bias", True),
        hidden_act=ad.get("hidden_act", "silu"),
        intermediate_size=ad.get("intermediate_size", 18944),
        text_hidden_size=ad.get("text_hidden_size", 3584),
        mlp_bias=ad.get("mlp_bias", False),
    )
    rope = dict(td.get("rope_parameters") or td.get("rope_scaling") or {})
    theta = rope.pop("rope_theta", td.get("rope_theta", 10000.0))
    rope.setdefault("rope_type", rope.pop("type", "default"))
    scaling_layers = td.get("rope_scaling_layers")
    num_layers = td.get("num_hidden_layers", 36)
    if scaling_layers is not None and sorted(scaling_layers) == list(range(num_layers)):
        scaling_layers = None
    text = TextConfig(
        hidden_size=td.get("hidden_size", 4096),
        num_attention_heads=td.get("num_attention_heads", 32),
        num_key_value_heads=td.get("num_key_value_heads", 8),
        head_dim=td.get("head_dim", 128),
        vocab_size=td.get("vocab_size", 151936),
        additional_vocab_size=td.get("additional_vocab_size", 128),
        attention_bias=td.get("attention_bias", td.get("qkv_bias", False)),
        qk_norm_type=td.get("qk_norm_type", "qwen3"),
        num_hidden_layers=num_layers,
        intermediate_size=td.get("intermediate_size", 12288),
        hidden_act=td.get("hidden_act", "silu"),
        max_position_embeddings=td.get("max_position_embeddings", 36864),
        rope_theta=float(theta),
        rope_scaling=tuple(sorted(rope.items())),
        rope_scaling_layers=None if scaling_layers is None else tuple(scaling_layers),
        rms_norm_eps=td.get("rms_norm_eps", td.get("layer_norm_eps", 1e-6)),
        norm_after=td.get("norm_after", False),
    )
    if d.get("tie_word_embeddings") or td.get("tie_word_embeddings"):
        raise ConfigError(
            "tie_word_embeddings=true is not supported: Molmo2's input table has the additional vocabulary "
            "and its lm_head does not. Untie the weights (save lm_head separately) and retry."
        )
    defaults = Molmo2Config()
    tokens = {
        f.name: d.get(f.name, getattr(defaults, f.name))
        for f in dataclasses.fields(Molmo2Config)
        if f.name.endswith("_id")
    }
    return Molmo2Config(vision=vision, adapter=adapter, text=text, **tokens, **runtime).validate()


def config_to_hf(cfg: Molmo2Config) -> dict[str, Any]:
    """The `config.json` dict that `transformers.Molmo2Config` reads."""
    v, a, t = cfg.vision, cfg.adapter, cfg.text
    rope = dict(t.rope_scaling)
    rope["rope_theta"] = t.rope_theta
    scaling_layers = list(range(t.num_hidden_layers)) if t.rope_scaling_layers is None else t.rope_scaling_layers
    return {
        "architectures": ["Molmo2ForConditionalGeneration"],
        "model_type": "molmo2",
        "vision_config": {
            "model_type": "molmo2_vision",
            "hidden_size": v.hidden_size,
            "intermediate_size": v.intermediate_size,
            "num_hidden_layers": v.num_hidden_layers,
            "num_attention_heads": v.num_attention_heads,
            "num_key_value_heads": v.num_key_value_heads,
            "head_dim": v.head_dim,
            "hidden_act": v.hidden_act,
            "layer_norm_eps": v.layer_norm_eps,
            "image_size": list(v.image_size),
            "patch_size": v.patch_size,
            "num_position_embeddings": v.num_patches,
            "num_channels": v.num_channels,
            "attention_bias": v.attention_bias,
        },
        "adapter_config": {
            "model_type": "molmo2_adapter",
            "vision_feature_layer": list(a.vision_feature_layers),
            "hidden_size": a.hidden_size,
            "num_attention_heads": a.num_attention_heads,
            "num_key_value_heads": a.num_key_value_heads,
            "head_dim": a.head_dim,
            "attention_bias": a.attention_bias,
            "hidden_act": a.hidden_act,
            "intermediate_size": a.intermediate_size,
            "text_hidden_size": a.text_hidden_size,
            "mlp_bias": a.mlp_bias,
        },
        "text_config": {
            "model_type": "molmo2_text",
            "hidden_size": t.hidden_size,
            "num_attention_heads": t.num_attention_heads,
            "num_key_value_heads": t.num_key_value_heads,
            "head_dim": t.head_dim,
            "vocab_size": t.vocab_size,
            "additional_vocab_size": t.additional_vocab_size,
            "attention_bias": t.attention_bias,
            "qk_norm_type": t.qk_norm_type,
            "num_hidden_layers": t.num_hidden_layers,
            "intermediate_size": t.intermediate_size,
            "hidden_act": t.hidden_act,
            "max_position_embeddings": t.max_position_embeddings,
            "rope_parameters": rope,
            "rope_scaling_layers": list(scaling_layers),
            "rms_norm_eps": t.rms_norm_eps,
            "norm_after": t.norm_after,
            "tie_word_embeddings": False,
        },
        "image_start_token_id": cfg.image_start_token_id,
        "low_res_image_start_token_id": cfg.low_res_image_start_token_id,
        "image_end_token_id": cfg.image_end_token_id,
        "image_patch_id": cfg.image_patch_id,
        "frame_start_token_id": cfg.frame_start_token_id,
        "frame_end_token_id": cfg.frame_end_token_id,
        "tie_word_embeddings": False,
    }
