"""The Molmo2 connector (`Molmo2Adapter`): attention pooling over windows of patches, then SwiGLU."""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

from stts_jax.models.config import Molmo2Config
from stts_jax.models.layers import SwiGLU, ViTAttention, dtypes

Array = jax.Array


def gather_windows(features: Array, pooling_idx: Array) -> tuple[Array, Array]:
    """Patches of each window and their validity.

    features: [num_patches_total, dim] (all frames flattened); pooling_idx: [num_windows, window]
    with -1 for padding. Returns patches [num_windows, window, dim] (padding zeroed) and
    valid [num_windows, window] bool.
    """
    valid = pooling_idx >= 0
    patches = features[jnp.maximum(pooling_idx, 0)] * valid[..., None].astype(features.dtype)
    return patches, valid


def window_mean(patches: Array, valid: Array) -> Array:
    """Mean of the valid patches of each window: [num_windows, window, dim] -> [num_windows, 1, dim]."""
    count = jnp.maximum(valid.sum(-1), 1).astype(patches.dtype)
    return patches.sum(-2, keepdims=True) / count[:, None, None]


class Connector(nn.Module):
    """ViT features [frames, patches, dim] + windows [tokens, window] -> LLM tokens [tokens, text_dim].

    Each token's query is the mean of its window's valid patches; keys/values are the patches.
    Windows with no valid patch produce a token too (transformers drops it); `out["token_valid"]`
    says which tokens are real.
    """

    cfg: Molmo2Config

    @nn.compact
    def __call__(self, features: Array, pooling_idx: Array) -> tuple[Array, dict[str, Array]]:
        a = self.cfg.adapter
        kw = dtypes(self.cfg)
        patches, valid = gather_windows(features.reshape(-1, features.shape[-1]), pooling_idx)
        pooled = ViTAttention(
            a.num_attention_heads,
            a.num_key_value_heads,
            a.head_dim,
            out_features=a.hidden_size,
            use_bias=a.attention_bias,
            attention_impl=self.cfg.attention_impl,
            name="pooling",
            **kw,
        )(window_mean(patches, valid), patches, mask=valid[:, None, None, :])
        tokens = SwiGLU(a.intermediate_size, a.text_hidden_size, a.mlp_bias, name="projector", **kw)(pooled[:, 0])
        return tokens, {"token_valid": valid.any(-1)}
