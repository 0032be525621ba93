"""The Molmo2 vision tower: SigLIP2-style ViT over flattened patches (`Molmo2VisionModel`)."""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

from stts_jax.models.config import Molmo2Config
from stts_jax.models.layers import ViTAttention, dtypes, gelu_tanh, init_stacked, run_stack

Array = jax.Array


class ViTBlock(nn.Module):
    """Pre-LN block: x + attn(LN(x)); x + MLP(LN(x)). Optional per-key attention bias and mask."""

    cfg: Molmo2Config

    @nn.compact
    def __call__(self, x: Array, _unused=None, *, mask: Array | None = None, bias: Array | None = None):
        v = self.cfg.vision
        kw = dtypes(self.cfg)
        h = nn.LayerNorm(epsilon=v.layer_norm_eps, use_fast_variance=False, name="layer_norm1", **kw)(x)
        x = x + ViTAttention(
            v.num_attention_heads,
            v.num_key_value_heads,
            v.head_dim,
            use_bias=v.attention_bias,
            attention_impl=self.cfg.attention_impl,
            name="attn",
            **kw,
        )(h, mask=mask, bias=bias)
        h = nn.LayerNorm(epsilon=v.layer_norm_eps, use_fast_variance=False, name="layer_norm2", **kw)(x)
        h = nn.Dense(v.intermediate_size, name="fc1", **kw)(h)
        x = x + nn.Dense(v.hidden_size, name="fc2", **kw)(gelu_tanh(h))
        return x, None


class VisionTransformer(nn.Module):
    """Patches [frames, patches, patch_dim] -> the feature layers the connector asks for.

    Only `cfg.vit_depth` blocks are run. Returns (features, out): features [frames, patches,
    hidden * len(feature layers)] in the adapter's layer order; out["vit/block_{d}"] is the hidden
    state after d blocks for each depth d the adapter reads.
    """

    cfg: Molmo2Config

    @nn.compact
    def __call__(self, patches: Array) -> tuple[Array, dict[str, Array]]:
        v = self.cfg.vision
        kw = dtypes(self.cfg)
        x = nn.Dense(v.hidden_size, name="patch_embedding", **kw)(patches.astype(kw["dtype"]))
        pos = self.param(
            "positional_embedding",
            nn.initializers.normal(0.02),
            (v.num_patches, v.hidden_size),
            kw["param_dtype"],
        )
        x = x + pos.astype(x.dtype)[None]
        block = ViTBlock(self.cfg, parent=None)
        blocks = self.param("blocks", init_stacked(block, self.cfg.vit_depth, x[:1, :1]))
        out = {"vit/block_0": x}
        done = 0
        for depth in sorted(set(self.cfg.vit_feature_depths)):
            x, _ = self.run_blocks(blocks, x, done, depth)
            out[f"vit/block_{depth}"] = x
            done = depth
        features = jnp.concatenate([out[f"vit/block_{d}"] for d in self.cfg.vit_feature_depths], axis=-1)
        return features, out

    def run_blocks(self, blocks, x: Array, start: int, stop: int, **kwargs) -> tuple[Array, None]:
        return run_stack(
            ViTBlock(self.cfg, parent=None),
            blocks,
            x,
            start=start,
            stop=stop,
            scan=self.cfg.scan_layers,
            remat_policy=self.cfg.remat_policy,
            **kwargs,
        )
