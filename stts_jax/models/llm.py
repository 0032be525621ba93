"""The Molmo2 language model (`Molmo2TextModel`): a Qwen3-style decoder with a KV cache."""

from __future__ import annotations

import math

import flax.linen as nn
import flax.struct
import jax
import jax.numpy as jnp
import numpy as np

from stts_jax.models.attention import SegmentMask, attend_segments
from stts_jax.models.config import Molmo2Config, TextConfig
from stts_jax.models.layers import RMSNorm, SwiGLU, dtypes, init_stacked, run_stack

Array = jax.Array


@flax.struct.dataclass
class TokenSequence:
    """The LLM's token arrays, in the packing contract: input_ids [batch, seq] (image_patch_id at the
    placeholders of vision tokens); segment_ids [batch, seq], the example of each token, 0 = padding;
    positions [batch, seq], restarting per example."""

    input_ids: Array
    segment_ids: Array
    positions: Array


def rope_frequencies(t: TextConfig, scaled: bool) -> tuple[np.ndarray, float]:
    """Inverse frequencies [head_dim / 2] and the cos/sin scaling, as transformers' rope init functions.

    `scaled=False` is Molmo2's unscaled rotary (same theta, no scaling) for layers outside
    `rope_scaling_layers`.
    """
    dim = t.head_dim
    exponents = np.arange(0, dim, 2, dtype=np.float32) / dim
    pos_freqs = t.rope_theta**exponents
    inv_freq = (1.0 / pos_freqs).astype(np.float32)
    params = dict(t.rope_scaling)
    kind = t.rope_type if scaled else "default"
    if kind == "default":
        return inv_freq, 1.0
    if kind == "linear":
        return (inv_freq / params["factor"]).astype(np.float32), 1.0
    if kind == "yarn":
        factor = params["factor"]
        original = params.get("original_max_position_embeddings", t.max_position_embeddings)
        mscale = lambda s, m=1.0: 1.0 if s <= 1 else 0.1 * m * math.log(s) + 1.0
        attention_factor = params.get("attention_factor")
        if attention_factor is None:
            if params.get("mscale") and params.get("mscale_all_dim"):
                attention_factor = mscale(factor, params["mscale"]) / mscale(factor, params["mscale_all_dim"])
            else:
                attention_factor = mscale(factor)
        beta_fast, beta_slow = params.get("beta_fast") or 32, params.get("beta_slow") or 1
        corr = lambda rot: dim * math.log(original / (rot * 2 * math.pi)) / (2 * math.log(t.rope_theta))
        low, high = corr(beta_fast), corr(beta_slow)
        if params.get("truncate", True):
            low, high = math.floor(low), math.ceil(high)
        low, high = max(low, 0), min(high, dim - 1)
        if low == high:
            high += 0.001
        ramp = np.clip((np.arange(dim // 2, dtype=np.float32) - low) / (high - low), 0, 1)
        extrapolation = 1 - ramp
        interp = 1.0 / (factor * pos_freqs)
        inv = interp * (1 - extrapolation) + (1.0 / pos_freqs) * extrapolation
        return inv.astype(np.float32), float(attention_factor)
    raise ValueError(f"Unsupported rope_type {kind!r}")


def rope_tables(t: TextConfig, positions: Array, dtype) -> dict[str, tuple[Array, Array]]:
    """cos/sin [batch, len, head_dim] for the scaled and unscaled rotaries at integer `positions`."""
    tables = {}
    for name, scaled in (("scaled", True), ("unscaled", False)):
        inv_freq, attention_scaling = rope_frequencies(t, scaled)
        freqs = positions[..., None].astype(jnp.float32) * jnp.asarray(inv_freq)
        emb = jnp.concatenate([freqs, freqs], axis=-1)
        tables[name] = (
            (jnp.cos(emb) * attention_scaling).astype(dtype),
            (jnp.sin(emb) * attention_scaling).astype(dtype),
        )
    return tables


def apply_rope(x: Array, cos: Array, sin: Array) -> Array:
    """x: [batch, len, heads, head_dim]; cos/sin: [batch, len, head_dim] (rotate-half convention)."""
    half = x.shape[-1] // 2
    rotated = jnp.concatenate([-x[..., half:], x[..., :half]], axis=-1)
    return x * cos[:, :, None] + rotated * sin[:, :, None]


class DecoderBlock(nn.Module):
    """One decoder layer. Carry: hidden [batch, len, dim]; per-layer input: (kv cache or None, scaled flag)."""

    cfg: Molmo2Config

    @nn.compact
    def __call__(self, x: Array, layer_in, *, rope, segments: SegmentMask, cache_index=None):
        t = self.cfg.text
        kw = dtypes(self.cfg)
        cache, use_scaled = layer_in
        cos = jnp.where(use_scaled, rope["scaled"][0], rope["unscaled"][0])
        sin = jnp.where(use_scaled, rope["scaled"][1], rope["unscaled"][1])
        norm = lambda name: RMSNorm(t.rms_norm_eps, name=name, **kw)
        dense = lambda n, name, bias=t.attention_bias: nn.Dense(n, use_bias=bias, name=name, **kw)

        h = x if t.norm_after else norm("input_norm")(x)
        b, s = h.shape[:2]
        q = dense(t.num_attention_heads * t.head_dim, "q")(h)
        k = dense(t.num_key_value_heads * t.head_dim, "k")(h)
        v = dense(t.num_key_value_heads * t.head_dim, "v")(h).reshape(b, s, t.num_key_value_heads, t.head_dim)
        if t.qk_norm_type == "olmo":
            q, k = norm("q_norm")(q), norm("k_norm")(k)
        q = q.reshape(b, s, t.num_attention_heads, t.head_dim)
        k = k.reshape(b, s, t.num_key_value_heads, t.head_dim)
        if t.qk_norm_type == "qwen3":
            q, k = norm("q_norm")(q), norm("k_norm")(k)
        q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
        new_cache = None
        if cache is not None:
            k = jax.lax.dynamic_update_slice(cache["k"], k.astype(cache["k"].dtype), (0, cache_index, 0, 0))
            v = jax.lax.dynamic_update_slice(cache["v"], v.astype(cache["v"].dtype), (0, cache_index, 0, 0))
            new_cache = {"k": k, "v": v}
        attn = attend_segments(q, k, v, segments, impl=self.cfg.attention_impl)
        attn = dense(t.hidden_size, "o", bias=False)(attn.reshape(b, s, -1))
        if t.norm_after:
            attn = norm("input_norm")(attn)
        x = x + attn
        h = x if t.norm_after else norm("post_attention_norm")(x)
        h = SwiGLU(t.intermediate_size, t.hidden_size, name="mlp", **kw)(h)
        if t.norm_after:
            h = norm("post_attention_norm")(h)
        return x + h, new_cache


class TextModel(nn.Module):
    """Decoder over input embeddings: [batch, len, dim] -> final-normed hidden states, new KV cache.

    `positions` [batch, len] feed the rotary; `segments` is the attention mask contract. With a
    `cache` ({"k", "v"}: [layers, batch, cache_len, kv_heads, head_dim]) the new keys/values are
    written at `cache_index` and attention runs over the whole cache.
    """

    cfg: Molmo2Config

    def setup(self):
        t = self.cfg.text
        kw = dtypes(self.cfg)
        self.embed = nn.Embed(
            t.vocab_size + t.additional_vocab_size,
            t.hidden_size,
            embedding_init=nn.initializers.normal(0.02),
            **kw,
        )
        sample = jnp.zeros((1, 1, t.hidden_size), kw["dtype"])
        one = jnp.ones((1, 1, t.head_dim), kw["dtype"])
        sample_rope = {"scaled": (one, one), "unscaled": (one, one)}
        sample_seg = SegmentMask.self_attention(jnp.ones((1, 1), jnp.int32))
        self.blocks = self.param(
            "blocks",
            init_stacked(
                DecoderBlock(self.cfg, parent=None),
                t.num_hidden_layers,
                sample,
                (None, True),
                rope=sample_rope,
                segments=sample_seg,
            ),
        )
        self.final_norm = RMSNorm(t.rms_norm_eps, **kw)

    def embed_tokens(self, input_ids: Array) -> Array:
        return self.embed(input_ids)

    def __call__(self, embeddings: Array, positions: Array, segments: SegmentMask, cache=None, cache_index=None):
        t = self.cfg.text
        rope = rope_tables(t, positions, embeddings.dtype)
        scaled = jnp.asarray([t.layer_uses_scaled_rope(i) for i in range(t.num_hidden_layers)])
        x, new_cache = run_stack(
            DecoderBlock(self.cfg, parent=None),
            self.blocks,
            embeddings,
            (cache, scaled),
            scan=self.cfg.scan_layers,
            remat_policy=self.cfg.remat_policy,
            rope=rope,
            segments=segments,
            cache_index=cache_index,
        )
        return self.final_norm(x), new_cache


def init_cache(cfg: Molmo2Config, batch: int, length: int, dtype=None) -> dict[str, Array]:
    """An empty KV cache: {"k", "v"} [layers, batch, length, kv_heads, head_dim]."""
    t = cfg.text
    shape = (t.num_hidden_layers, batch, length, t.num_key_value_heads, t.head_dim)
    dtype = dtype or jnp.dtype(cfg.dtype)
    return {"k": jnp.zeros(shape, dtype), "v": jnp.zeros(shape, dtype)}
