"""The Molmo2 vision tower: SigLIP2-style ViT over flattened patches (`Molmo2VisionModel`)."""

from __future__ import annotations

from collections.abc import Iterable

import flax.linen as nn
import jax
import jax.numpy as jnp

from stts_jax.models.config import Molmo2Config
from stts_jax.models.layers import dtypes, gelu_tanh, init_stacked, run_stack, vision_attention

Array = jax.Array


class ViTBlock(nn.Module):
    """Pre-LN block: x + attn(LN(x)); x + MLP(LN(x)). Attention options as in `ViTAttention`."""

    cfg: Molmo2Config

    @nn.compact
    def __call__(self, x: Array, _unused=None, **attention_kwargs):
        v = self.cfg.vision
        kw = dtypes(self.cfg)
        norm = lambda name: nn.LayerNorm(epsilon=v.layer_norm_eps, use_fast_variance=False, name=name, **kw)
        h = norm("layer_norm1")(x)
        x = x + vision_attention(self.cfg, "attn")(h, **attention_kwargs)
        h = nn.Dense(v.intermediate_size, name="fc1", **kw)(norm("layer_norm2")(x))
        x = x + nn.Dense(v.hidden_size, name="fc2", **kw)(gelu_tanh(h))
        return x, None


class VisionTransformer(nn.Module):
    """Patches [frames, patches, patch_dim] -> the feature layers the connector asks for.

    Only `cfg.vit_depth` blocks are run. `__call__` returns (features, out): features [frames,
    patches, hidden * len(feature layers)] in the adapter's layer order; out["vit/block_{d}"] is the
    hidden state after d blocks for each depth d the adapter reads. `embed` and `run` expose the
    pieces so that STTS can cut the stack.
    """

    cfg: Molmo2Config

    def setup(self):
        v = self.cfg.vision
        kw = dtypes(self.cfg)
        self.patch_embedding = nn.Dense(v.hidden_size, **kw)
        self.positional_embedding = self.param(
            "positional_embedding", nn.initializers.normal(0.02), (v.num_patches, v.hidden_size), kw["param_dtype"]
        )
        sample = jnp.zeros((1, 1, v.hidden_size), kw["dtype"])
        self.blocks = self.param("blocks", init_stacked(ViTBlock(self.cfg, parent=None), self.cfg.vit_depth, sample))

    def embed(self, patches: Array) -> Array:
        """[frames, patches, patch_dim] -> [frames, patches, hidden] with position embeddings added."""
        x = self.patch_embedding(patches.astype(jnp.dtype(self.cfg.dtype)))
        return x + self.positional_embedding.astype(x.dtype)[None]

    def run(self, x: Array, start: int, stop: int, keep_depths: Iterable[int] = (), **attention_kwargs):
        """Blocks start..stop-1 on x; returns (x, {depth: hidden after `depth` blocks} for keep_depths)."""
        kept = {}
        done = start
        for depth in sorted({d for d in keep_depths if start <= d <= stop} | {stop}):
            x, _ = run_stack(
                ViTBlock(self.cfg, parent=None),
                self.blocks,
                x,
                start=done,
                stop=depth,
                scan=self.cfg.scan_layers,
                remat_policy=self.cfg.remat_policy,
                **attention_kwargs,
            )
            kept[depth] = x
            done = depth
        return x, {d: kept[d] for d in keep_depths if d in kept}

    def features(self, hidden: dict[int, Array]) -> Array:
        """The adapter's input: the feature-layer hidden states concatenated in its order."""
        return jnp.concatenate([hidden[d] for d in self.cfg.vit_feature_depths], axis=-1)

    def __call__(self, patches: Array) -> tuple[Array, dict[str, Array]]:
        x = self.embed(patches)
        _, hidden = self.run(x, 0, self.cfg.vit_depth, keep_depths={0, *self.cfg.vit_feature_depths})
        return self.features(hidden), {f"vit/block_{d}": h for d, h in hidden.items()}
