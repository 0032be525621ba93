"""Molmo2 model configuration: mirrors `transformers`' Molmo2 `config.json`, plus how we run it.

The three sub-configs carry exactly the fields of Hugging Face's `Molmo2VisionConfig`,
`Molmo2AdapterConfig` and `Molmo2TextConfig` that change the numbers; `Molmo2Config` adds the special
token ids and the run-time choices that are ours (dtypes, attention kernel, scanning, remat).
"""

from __future__ import annotations

import dataclasses
from typing import Any

from stts_jax.errors import ConfigError

ATTENTION_IMPLS = ("xla", "jax", "splash", "gpu")  # what each runs: stts_jax.models.attention
STTS_METHODS = ("none", "random", "heuristic", "stts", "stts_no_aux", "fewer_frames", "tome")
PRUNING_METHODS = ("random", "heuristic", "stts", "stts_no_aux", "tome")
REMAT_POLICIES = ("none", "full", "dots", "dots_no_batch")
ROPE_TYPES = ("default", "linear", "yarn")
DTYPES = ("float32", "bfloat16", "float16")


def _check(condition: bool, message: str) -> None:
    if not condition:
        raise ConfigError(message)


@dataclasses.dataclass(frozen=True)
class VisionConfig:
    """SigLIP2-style ViT over flattened patches (`Molmo2VisionConfig`)."""

    hidden_size: int = 1152
    intermediate_size: int = 4304
    num_hidden_layers: int = 25  # the released weights stop at block 24, the deepest one the adapter reads
    num_attention_heads: int = 16
    num_key_value_heads: int = 16
    head_dim: int = 72
    hidden_act: str = "gelu_pytorch_tanh"
    layer_norm_eps: float = 1e-6
    image_size: tuple[int, int] = (378, 378)
    patch_size: int = 14
    num_channels: int = 3
    attention_bias: bool = True

    @property
    def patch_grid(self) -> tuple[int, int]:
        return self.image_size[0] // self.patch_size, self.image_size[1] // self.patch_size

    @property
    def num_patches(self) -> int:
        rows, cols = self.patch_grid
        return rows * cols

    @property
    def patch_dim(self) -> int:
        return self.patch_size * self.patch_size * self.num_channels


@dataclasses.dataclass(frozen=True)
class AdapterConfig:
    """Attention pooling over windows of ViT features, then a SwiGLU projector (`Molmo2AdapterConfig`)."""

    vision_feature_layers: tuple[int, ...] = (
        24,
        18,
    )  # HF `vision_feature_layer`; negative counts from the end
    hidden_size: int = 1152
    num_attention_heads: int = 16
    num_key_value_heads: int = 16
    head_dim: int = 72
    attention_bias: bool = True
    hidden_act: str = "silu"
    intermediate_size: int = 12288
    text_hidden_size: int = 4096
    mlp_bias: bool = False
    pooling_size: tuple[int, int] = (3, 3)  # patches per window (rows, cols); the processor's pooling_size


@dataclasses.dataclass(frozen=True)
class TextConfig:
    """Qwen3-style decoder (`Molmo2TextConfig`)."""

    hidden_size: int = 4096
    num_attention_heads: int = 32
    num_key_value_heads: int = 8
    head_dim: int = 128
    vocab_size: int = 151936
    additional_vocab_size: int = 128
    attention_bias: bool = False
    qk_norm_type: str = "qwen3"  # "qwen3": RMSNorm per head; "olmo": over the whole projection
    num_hidden_layers: int = 36
    intermediate_size: int = 12288
    hidden_act: str = "silu"
    max_position_embeddings: int = 36864
    rope_theta: float = 1_000_000.0
    rope_scaling: tuple[tuple[str, Any], ...] = (("rope_type", "default"),)  # HF `rope_parameters` minus theta
    rope_scaling_layers: tuple[int, ...] | None = None  # layers with the scaled rotary; None = all
    rms_norm_eps: float = 1e-6
    norm_after: bool = False

    @property
    def rope_type(self) -> str:
        return dict(self.rope_scaling).get("rope_type", "default")

    def layer_uses_scaled_rope(self, layer: int) -> bool:
        return self.rope_scaling_layers is None or layer in self.rope_scaling_layers


@dataclasses.dataclass(frozen=True)
class STTSConfig:
    """Spatio-Temporal Token Scoring (STTS.md sections 2-7) and the baselines with the same budget."""

    method: str = "none"  # none | random | heuristic | stts | stts_no_aux | fewer_frames | tome
    prune_ratio: float = 0.5  # k: each video loses floor(windows * k * frames) windows (frame 0 never)
    layer: int = 3  # l: scorer after ViT block l, its bias in block l+1, pruned from block l+2 on
    window_size: tuple[int, int] = (3, 3)  # must equal the connector's pooling windows
    mlp_dim: int | None = None  # scorer MLP width; None = the ViT's MLP width (4304)
    aux_weight: float = 0.5  # temporal auxiliary loss weight: reference code 0.5, paper 1.0
    aux_stop_gradient: bool = False  # stop the gradient through the aux target (the reference does not)
    bias_min: float = 0.1353352832366127  # scores are min-max rescaled to [bias_min, 1]; default e^-2
    bias_granularity: str = "frame"  # rescale per "frame", or per patch "row" (the reference's quirk)
    position_policy: str = "renumber"  # LLM positions after removal: "renumber" contiguously or "keep"

    @property
    def prunes(self) -> bool:
        return self.method in PRUNING_METHODS

    @property
    def uses_scorer(self) -> bool:
        return self.method in ("stts", "stts_no_aux")

    @property
    def effective_aux_weight(self) -> float:
        return self.aux_weight if self.method == "stts" else 0.0


@dataclasses.dataclass(frozen=True)
class Molmo2Config:
    """The whole VLM: sub-configs, special tokens, and how to run it."""

    vision: VisionConfig = VisionConfig()
    adapter: AdapterConfig = AdapterConfig()
    text: TextConfig = TextConfig()
    image_start_token_id: int = 151936
    image_end_token_id: int = 151937
    image_patch_id: int = 151938
    image_col_id: int = 151939
    low_res_image_start_token_id: int = 151940
    frame_start_token_id: int = 151943
    frame_end_token_id: int = 151944
    # Run-time choices, not part of Hugging Face's config.json.
    dtype: str = "float32"  # compute dtype
    param_dtype: str = "float32"
    attention_impl: str = "xla"  # "xla": explicit masks (reference); "jax": jax.nn.dot_product_attention
    # (its cuDNN kernel on GPU for bf16); "splash": Pallas splash attention with segment ids (TPU, or
    # interpret mode on CPU); "gpu": cuDNN flash attention for the ViT (bf16/fp16 on a GPU, else XLA) and
    # Pallas GPU (Triton) kernels for the LLM (interpret mode off GPU); no [len, len] array at either
    scan_layers: bool = True  # run the stacked blocks with lax.scan (fast compiles) or unrolled
    remat_policy: str = "none"  # rematerialise each block in the backward pass: none|full|dots|dots_no_batch
    stts: STTSConfig = STTSConfig()

    @property
    def vision_token_ids(self) -> tuple[int, ...]:
        """Tokens of the bidirectional vision block (`mm_token_type_ids == 1` in transformers)."""
        return (
            self.image_patch_id,
            self.image_col_id,
            self.image_start_token_id,
            self.low_res_image_start_token_id,
            self.frame_start_token_id,
            self.image_end_token_id,
            self.frame_end_token_id,
        )

    @property
    def vit_feature_depths(self) -> tuple[int, ...]:
        """For each adapter feature layer, how many ViT blocks have run when it is taken (0 = embeddings).

        Follows transformers: `hidden_states[layer + 1 if layer >= 0 else layer]` over the
        `num_hidden_layers + 1` hidden states.
        """
        n = self.vision.num_hidden_layers
        return tuple(layer + 1 if layer >= 0 else n + 1 + layer for layer in self.adapter.vision_feature_layers)

    @property
    def vit_depth(self) -> int:
        """ViT blocks actually computed: the deepest feature layer; later blocks are never run."""
        return max(self.vit_feature_depths)

    def replace(self, **changes: Any) -> Molmo2Config:
        return dataclasses.replace(self, **changes)

    def with_stts(self, **changes: Any) -> Molmo2Config:
        """The same model with STTS fields changed (e.g. method, prune_ratio at inference), validated."""
        return dataclasses.replace(self, stts=dataclasses.replace(self.stts, **changes)).validate()

    def validate(self) -> Molmo2Config:
        v, a, t = self.vision, self.adapter, self.text
        for name, sub in (("vision", v), ("adapter", a), ("text", t)):
            _check(
                sub.num_attention_heads % sub.num_key_value_heads == 0,
                f"{name}.num_attention_heads ({sub.num_attention_heads}) must be a multiple of "
                f"{name}.num_key_value_heads ({sub.num_key_value_heads}).",
            )
            _check(sub.head_dim > 0 and sub.hidden_size > 0, f"{name}.head_dim and hidden_size must be positive.")
        _check(
            v.image_size[0] % v.patch_size == 0 and v.image_size[1] % v.patch_size == 0,
            f"vision.image_size {v.image_size} must be a multiple of vision.patch_size {v.patch_size}.",
        )
        _check(
            v.hidden_act == "gelu_pytorch_tanh",
            f"vision.hidden_act {v.hidden_act!r}: only gelu_pytorch_tanh.",
        )
        _check(len(a.vision_feature_layers) > 0, "adapter.vision_feature_layers must name at least one layer.")
        n = v.num_hidden_layers
        for layer in a.vision_feature_layers:
            _check(
                -(n + 1) <= layer < n,
                f"adapter.vision_feature_layers entry {layer} must index the {n} ViT layers (-{n + 1}..{n - 1}).",
            )
        _check(a.hidden_size == v.hidden_size, "adapter.hidden_size must equal vision.hidden_size.")
        _check(a.hidden_act == "silu" and t.hidden_act == "silu", "adapter/text hidden_act must be 'silu'.")
        _check(a.text_hidden_size == t.hidden_size, "adapter.text_hidden_size must equal text.hidden_size.")
        _check(t.qk_norm_type in ("qwen3", "olmo"), f"text.qk_norm_type {t.qk_norm_type!r}: use qwen3 or olmo.")
        _check(t.rope_type in ROPE_TYPES, f"text.rope_scaling rope_type {t.rope_type!r}: supported {ROPE_TYPES}.")
        if t.rope_scaling_layers is not None:
            bad = [i for i in t.rope_scaling_layers if not 0 <= i < t.num_hidden_layers]
            _check(not bad, f"text.rope_scaling_layers {bad} outside 0..{t.num_hidden_layers - 1}.")
        _check(t.additional_vocab_size >= 0, "text.additional_vocab_size must be >= 0.")
        _check(self.dtype in DTYPES, f"dtype {self.dtype!r}: use one of {DTYPES}.")
        _check(self.param_dtype in DTYPES, f"param_dtype {self.param_dtype!r}: use one of {DTYPES}.")
        _check(
            self.attention_impl in ATTENTION_IMPLS,
            f"attention_impl {self.attention_impl!r}: {ATTENTION_IMPLS}.",
        )
        _check(self.remat_policy in REMAT_POLICIES, f"remat_policy {self.remat_policy!r}: {REMAT_POLICIES}.")
        self._validate_stts()
        return self

    def _validate_stts(self) -> None:
        s = self.stts
        _check(s.method in STTS_METHODS, f"stts.method {s.method!r}: choose one of {STTS_METHODS}.")
        _check(0.0 <= s.prune_ratio < 1.0, f"stts.prune_ratio {s.prune_ratio} must be in [0, 1).")
        if s.method == "none":
            return
        _check(
            s.layer >= 0 and s.layer + 1 < self.vit_depth,
            f"stts.layer {s.layer}: the scorer sits after block l and biases block l+1, so l must be in "
            f"0..{self.vit_depth - 2} for a ViT that runs {self.vit_depth} blocks.",
        )
        _check(
            tuple(s.window_size) == tuple(self.adapter.pooling_size),
            f"stts.window_size {tuple(s.window_size)} must equal the connector's pooling windows "
            f"adapter.pooling_size {tuple(self.adapter.pooling_size)}: one score per future LLM token.",
        )
        _check(0.0 < s.bias_min <= 1.0, f"stts.bias_min {s.bias_min} must be in (0, 1].")
        _check(s.bias_granularity in ("frame", "row"), f"stts.bias_granularity {s.bias_granularity!r}: frame|row.")
        _check(s.position_policy in ("renumber", "keep"), f"stts.position_policy {s.position_policy!r}: renumber|keep.")
        _check(s.aux_weight >= 0, f"stts.aux_weight {s.aux_weight} must be >= 0.")
