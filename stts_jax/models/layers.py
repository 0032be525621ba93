"""Building blocks shared by the ViT, the connector and the LLM: dense layers, norms, block stacks."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from stts_jax.models.attention import attend, attend_packed_frames
from stts_jax.models.config import Molmo2Config

Array = jax.Array

REMAT = {
    "full": jax.checkpoint_policies.nothing_saveable,
    "dots": jax.checkpoint_policies.checkpoint_dots,
    "dots_no_batch": jax.checkpoint_policies.dots_with_no_batch_dims_saveable,
}


def dtypes(cfg: Molmo2Config) -> dict[str, Any]:
    return {"dtype": jnp.dtype(cfg.dtype), "param_dtype": jnp.dtype(cfg.param_dtype)}


def gelu_tanh(x: Array) -> Array:
    return jax.nn.gelu(x, approximate=True)


class RMSNorm(nn.Module):
    """RMSNorm in fp32, cast back, then scaled (transformers' `Molmo2RMSNorm` order)."""

    eps: float = 1e-6
    dtype: Any = jnp.float32
    param_dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: Array) -> Array:
        scale = self.param("scale", nn.initializers.ones, (x.shape[-1],), self.param_dtype)
        x32 = x.astype(jnp.float32)
        normed = x32 * jax.lax.rsqrt(jnp.mean(x32 * x32, axis=-1, keepdims=True) + self.eps)
        return scale.astype(self.dtype) * normed.astype(self.dtype)


class ViTAttention(nn.Module):
    """Biased multi-head attention of the ViT and of the connector's pooling (`Molmo2VisionAttention`).

    Queries come from `x` [batch, q_len, in_dim], keys/values from `kv` (default `x`); the output has
    `out_features` (default: in_dim).
    """

    num_heads: int
    num_kv_heads: int
    head_dim: int
    out_features: int | None = None
    use_bias: bool = True
    attention_impl: str = "xla"
    dtype: Any = jnp.float32
    param_dtype: Any = jnp.float32

    @nn.compact
    def __call__(
        self,
        x: Array,
        kv: Array | None = None,
        *,
        mask: Array | None = None,
        bias: Array | None = None,
        frame_segments: Array | None = None,
        frame_len: int = 0,
        frame_granule: int = 0,
        frame_key_bias: Array | None = None,
    ) -> Array:
        """mask / bias as in `attend`; or `frame_segments` [batch, slots]: x is a packed buffer of frames
        (<= frame_len slots each, starting at multiples of frame_granule) and attention stays within each
        frame (`attend_packed_frames`), with `frame_key_bias` [batch, slots] added per key if given."""
        kv = x if kv is None else kv
        dense = lambda n, name: nn.Dense(
            n, use_bias=self.use_bias, dtype=self.dtype, param_dtype=self.param_dtype, name=name
        )
        q = dense(self.num_heads * self.head_dim, "q")(x).reshape(*x.shape[:2], self.num_heads, self.head_dim)
        k = dense(self.num_kv_heads * self.head_dim, "k")(kv).reshape(*kv.shape[:2], self.num_kv_heads, -1)
        v = dense(self.num_kv_heads * self.head_dim, "v")(kv).reshape(*kv.shape[:2], self.num_kv_heads, -1)
        if frame_segments is not None:
            out = attend_packed_frames(
                q, k, v, frame_segments, frame_len, frame_granule, self.attention_impl, frame_key_bias
            )
        else:
            out = attend(q, k, v, mask=mask, bias=bias, impl=self.attention_impl)
        return dense(self.out_features or x.shape[-1], "o")(out.reshape(*x.shape[:2], -1))


def vision_attention(cfg: Molmo2Config, name: str) -> ViTAttention:
    """An attention layer shaped like the ViT's (its heads, width and biases)."""
    v = cfg.vision
    return ViTAttention(
        v.num_attention_heads,
        v.num_key_value_heads,
        v.head_dim,
        use_bias=v.attention_bias,
        attention_impl=cfg.attention_impl,
        name=name,
        **dtypes(cfg),
    )


class SwiGLU(nn.Module):
    """down(silu(gate(x)) * up(x)), no biases unless asked."""

    hidden: int
    out_features: int
    use_bias: bool = False
    dtype: Any = jnp.float32
    param_dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: Array) -> Array:
        kw = {"dtype": self.dtype, "param_dtype": self.param_dtype}
        gate = nn.Dense(self.hidden, use_bias=self.use_bias, name="gate", **kw)(x)
        up = nn.Dense(self.hidden, use_bias=self.use_bias, name="up", **kw)(x)
        return nn.Dense(self.out_features, use_bias=False, name="down", **kw)(jax.nn.silu(gate) * up)


def init_stacked(block: nn.Module, num_layers: int, *sample_args: Any, **sample_kwargs: Any) -> Callable:
    """An initializer for `num_layers` copies of `block`'s params stacked on a leading axis."""

    def init(rng: Array) -> Any:
        init_one = lambda r: block.init(r, *sample_args, **sample_kwargs)["params"]
        return jax.vmap(init_one)(jax.random.split(rng, num_layers))

    return init


def run_stack(
    block: nn.Module,
    stacked_params: Any,
    carry: Any,
    per_layer: Any = None,
    *,
    start: int = 0,
    stop: int | None = None,
    scan: bool = True,
    remat_policy: str = "none",
    **kwargs: Any,
) -> tuple[Any, Any]:
    """Applies blocks `start..stop-1` of a stacked parameter tree in order.

    `block.apply({'params': p}, carry, per_layer_slice, **kwargs)` must return `(carry, output)`;
    `per_layer` is a pytree with a leading layer axis (e.g. KV caches), sliced like the params.
    One parameter layout serves both execution modes: `lax.scan` (one compiled body) or unrolled.
    Returns the final carry and the per-layer outputs stacked on a leading axis.
    """
    stop = jax.tree.leaves(stacked_params)[0].shape[0] if stop is None else stop
    params = jax.tree.map(lambda p: p[start:stop], stacked_params)
    xs = (params, jax.tree.map(lambda p: p[start:stop], per_layer))

    def body(c, x):
        return block.apply({"params": x[0]}, c, x[1], **kwargs)

    if remat_policy != "none":
        body = jax.checkpoint(body, policy=REMAT[remat_policy])
    if scan:
        return jax.lax.scan(body, carry, xs)
    outputs = []
    for i in range(stop - start):
        carry, out = body(carry, jax.tree.map(lambda p, i=i: p[i], xs))
        outputs.append(out)
    return carry, jax.tree.map(lambda *o: jnp.stack(o), *outputs) if outputs and outputs[0] is not None else None
