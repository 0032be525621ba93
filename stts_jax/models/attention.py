"""Attention in one place: the mask contract, the XLA reference path and the accelerated kernels.

Every attention in the project goes through `attend` (dense mask and/or additive bias) or
`attend_segments` (a `SegmentMask`: packed rows described by segment ids). The dense mask of a
`SegmentMask` is built by exactly one function, `make_attention_mask`; the kernels must agree with it.
"""

from __future__ import annotations

import functools

import flax.struct
import jax
import jax.numpy as jnp
import numpy as np

Array = jax.Array


@flax.struct.dataclass
class SegmentMask:
    """Which query may see which key, for rows that pack several examples.

    q_segment_ids: [batch, q_len] int; the example a query belongs to, 0 = padding.
    kv_segment_ids: [batch, kv_len] int; likewise for keys (0 = padding or an empty cache slot).
    q_slots / kv_slots: [batch, q_len] / [batch, kv_len] int; slot index in the row, for causality.
    q_block_ids / kv_block_ids: [batch, q_len] / [batch, kv_len] int or None; tokens with the same
      positive id see each other in both directions (the vision tokens of one example); 0 = none.
    causal: static; whether a query sees only keys at slots <= its own (outside its block).
    """

    q_segment_ids: Array
    kv_segment_ids: Array
    q_slots: Array
    kv_slots: Array
    q_block_ids: Array | None = None
    kv_block_ids: Array | None = None
    causal: bool = flax.struct.field(pytree_node=False, default=True)

    @classmethod
    def self_attention(cls, segment_ids: Array, block_ids: Array | None = None, causal: bool = True) -> SegmentMask:
        """Queries and keys are the same tokens: segment_ids / block_ids are [batch, len]."""
        slots = jnp.broadcast_to(jnp.arange(segment_ids.shape[1], dtype=jnp.int32), segment_ids.shape)
        return cls(segment_ids, segment_ids, slots, slots, block_ids, block_ids, causal)


def make_attention_mask(m: SegmentMask) -> Array:
    """The dense boolean mask [batch, 1, q_len, kv_len] of a `SegmentMask`.

    visible = same segment AND key not padding AND (not causal OR key slot <= query slot OR both
    tokens in the same bidirectional block).
    """
    same_segment = m.q_segment_ids[:, :, None] == m.kv_segment_ids[:, None, :]
    visible = same_segment & (m.kv_segment_ids[:, None, :] != 0)
    if m.causal:
        allowed = m.kv_slots[:, None, :] <= m.q_slots[:, :, None]
        if m.q_block_ids is not None:
            same_block = m.q_block_ids[:, :, None] == m.kv_block_ids[:, None, :]
            allowed |= same_block & (m.q_block_ids[:, :, None] > 0)
        visible &= allowed
    return visible[:, None]


def _xla_attention(
    query: Array, key: Array, value: Array, mask: Array | None, bias: Array | None, scale: float
) -> Array:
    """Reference: explicit logits, fp32 softmax. Shapes [b, t, h, d] / [b, s, kv, d] -> [b, t, h, d]."""
    b, t, h, d = query.shape
    kv = key.shape[2]
    q = query.reshape(b, t, kv, h // kv, d)
    logits = jnp.einsum("btkgd,bskd->bkgts", q, key).astype(jnp.float32) * scale
    if bias is not None:  # [b, h|1, t, s] -> [b, kv, g, t, s]
        logits = logits + _to_groups(bias, kv).astype(jnp.float32)
    if mask is not None:
        logits = jnp.where(_to_groups(mask, kv), logits, jnp.finfo(jnp.float32).min)
    weights = jax.nn.softmax(logits, axis=-1).astype(value.dtype)
    out = jnp.einsum("bkgts,bskd->btkgd", weights, value)
    return out.reshape(b, t, h, d)


def _to_groups(x: Array, kv: int) -> Array:
    """[b, h|1, t, s] -> [b, kv|1, h/kv|1, t, s] so it broadcasts against grouped logits."""
    b, h, t, s = x.shape
    if h == 1:
        return x[:, :, None]
    return x.reshape(b, kv, h // kv, t, s)


def attend(
    query: Array,
    key: Array,
    value: Array,
    *,
    mask: Array | None = None,
    bias: Array | None = None,
    impl: str = "xla",
) -> Array:
    """Scaled dot-product attention with grouped-query heads.

    query: [batch, q_len, heads, head_dim]; key / value: [batch, kv_len, kv_heads, head_dim].
    mask: bool, broadcastable to [batch, heads, q_len, kv_len] (True = visible).
    bias: float, added to the logits, broadcastable likewise (e.g. STTS log-scores per key).
    A query with no visible key returns the mean of the values, as transformers' eager path does.
    impl: "xla" (reference), "jax" (`jax.nn.dot_product_attention`: its cuDNN kernel on GPU for
    bf16/fp16, else its XLA path), "splash" (Pallas TPU kernel; used when there is neither mask nor
    bias, else the XLA path).
    """
    if impl == "splash" and mask is None and bias is None:  # plain full attention (the unpacked ViT)
        ones = jnp.ones(query.shape[:2], jnp.int32)
        return splash_attention(query, key, value, SegmentMask.self_attention(ones, causal=False))
    scale = query.shape[-1] ** -0.5
    if mask is not None:
        mask = jnp.broadcast_to(mask, (query.shape[0], mask.shape[1], query.shape[1], key.shape[1]))
    if bias is not None:
        bias = jnp.broadcast_to(bias, (query.shape[0], bias.shape[1], query.shape[1], key.shape[1]))
    if impl == "jax":
        heads, kv = query.shape[2], key.shape[2]
        return jax.nn.dot_product_attention(
            query,
            jnp.repeat(key, heads // kv, axis=2) if heads != kv else key,
            jnp.repeat(value, heads // kv, axis=2) if heads != kv else value,
            bias=bias,
            mask=mask,
            scale=scale,
            implementation="cudnn" if jax.default_backend() == "gpu" and query.dtype != jnp.float32 else None,
        )
    return _xla_attention(query, key, value, mask, bias, scale)


def attend_segments(query: Array, key: Array, value: Array, segments: SegmentMask, *, impl: str = "xla") -> Array:
    """Attention over packed rows described by a `SegmentMask` (shapes as in `attend`)."""
    if impl == "splash" and query.shape[1] == key.shape[1]:  # self-attention; a KV cache takes the XLA path
        return splash_attention(query, key, value, segments)
    return attend(query, key, value, mask=make_attention_mask(segments), impl=impl)


def attend_packed_frames(
    query: Array, key: Array, value: Array, segment_ids: Array, frame_len: int, impl: str
) -> Array:
    """Full attention within each frame of a flat packed buffer (frames contiguous, <= frame_len slots).

    query / key / value: [batch, slots, heads, head_dim]; segment_ids: [batch, slots], 0 = padding.
    XLA: chunks of C >= frame_len slots, each query chunk against its own and both neighbouring
    chunks (slots must be a multiple of C). Splash: a static band |i - j| < frame_len and-ed with the
    segment ids, so the kernel skips every block outside the band.
    """
    if impl == "splash":
        return splash_attention(query, key, value, SegmentMask.self_attention(segment_ids, causal=False), frame_len)
    from stts_jax.stts.packing import chunk_size

    b, s, h, d = query.shape
    c = chunk_size(frame_len)
    n = s // c
    chunks = lambda x: x.reshape(b, n, c, *x.shape[2:])
    neighbours = lambda x, fill: jnp.concatenate(
        [
            jnp.pad(x, ((0, 0), (1, 0)) + ((0, 0),) * (x.ndim - 2), constant_values=fill)[:, :-1],
            x,
            jnp.pad(x, ((0, 0), (0, 1)) + ((0, 0),) * (x.ndim - 2), constant_values=fill)[:, 1:],
        ],
        axis=2,
    )
    q_seg = chunks(segment_ids)
    kv_seg = neighbours(q_seg, -1)
    mask = (q_seg[..., :, None] == kv_seg[..., None, :]) & (q_seg[..., :, None] > 0)
    k = neighbours(chunks(key), 0).reshape(b * n, 3 * c, *key.shape[2:])
    v = neighbours(chunks(value), 0).reshape(b * n, 3 * c, *value.shape[2:])
    out = attend(chunks(query).reshape(b * n, c, h, d), k, v, mask=mask.reshape(b * n, 1, c, 3 * c), impl=impl)
    return out.reshape(b, s, h, d)


# -- Pallas splash attention (TPU; interpret mode elsewhere) -----------------------------------------------

_MASK_VALUE = -0.7 * float(np.finfo(np.float32).max)


@functools.lru_cache(maxsize=64)
def _splash_kernel(q_len: int, kv_len: int, heads: int, kind: str, interpret: bool, residuals: bool, band: int):
    from jax.experimental.pallas.ops.tpu.splash_attention import splash_attention_kernel as sk
    from jax.experimental.pallas.ops.tpu.splash_attention import splash_attention_mask as sm

    shape = (q_len, kv_len)
    if kind == "causal":
        base = sm.CausalMask(shape)
    elif kind == "upper":  # key slot >= query slot, computed lazily per block
        base = sm.LocalMask(shape, window_size=(0, None), offset=0)
    elif band:  # |key slot - query slot| < band
        base = sm.LocalMask(shape, window_size=(band - 1, band - 1), offset=0)
    else:
        base = sm.FullMask(shape)
    block = 128, 128
    sizes = sk.BlockSizes(
        block_q=block[0],
        block_kv=block[1],
        block_kv_compute=block[1],
        block_q_dkv=block[0],
        block_kv_dkv=block[1],
        block_kv_dkv_compute=block[1],
        block_q_dq=block[0],
        block_kv_dq=block[1],
    )
    with jax.ensure_compile_time_eval():  # the cached kernel's mask arrays must not be tracers
        return sk.make_splash_mha(
            sm.MultiHeadMask([base] * heads),
            head_shards=1,
            q_seq_shards=1,
            block_sizes=sizes,
            save_residuals=residuals,
            interpret=interpret,
        )


def _splash_call(
    q: Array, k: Array, v: Array, q_ids: Array, kv_ids: Array, kind: str, residuals: bool = False, band: int = 0
) -> tuple[Array, Array | None]:
    """One splash pass over [b, t, h, d] tensors -> (out [b, t, h, d] fp32, logsumexp [b, h, t] or None).

    The kernel differentiates only without residuals (`residuals=False`).
    """
    from jax.experimental.pallas.ops.tpu.splash_attention import splash_attention_kernel as sk

    b, t, h, d = q.shape
    interpret = jax.default_backend() != "tpu"
    kernel = _splash_kernel(t, k.shape[1], h, kind, interpret, residuals, band)
    scale = d**-0.5
    qh = (q * scale).transpose(0, 2, 1, 3)  # splash takes [heads, len, dim] and applies no scale itself
    kh, vh = k.transpose(0, 2, 1, 3), v.transpose(0, 2, 1, 3)

    def one(qi, ki, vi, qs, ks):
        result = kernel(qi, ki, vi, segment_ids=sk.SegmentIds(q=qs, kv=ks))
        return (result[0], result[1][0]) if residuals else (result, None)

    out, lse = jax.vmap(one)(qh, kh, vh, q_ids, kv_ids)
    return out.transpose(0, 2, 1, 3).astype(jnp.float32), lse


def splash_attention(query: Array, key: Array, value: Array, segments: SegmentMask, band: int = 0) -> Array:
    """`attend_segments` on the Pallas splash kernel, equal to `make_attention_mask` on real tokens.

    Splash masks are static (causal / full) and-ed with dynamic segment ids. A causal mask with a
    bidirectional vision block is the union of two disjoint key sets, each one splash pass:
    (1) causal keys of the same segment; (2) strictly later keys of the same block, expressed by
    giving tokens outside any block ids that never match. The two partial softmaxes are merged by
    their log-sum-exps. Block ids must be unique within a row (the VLM uses the segment id).
    Self-attention only; lengths are padded to the kernel's 128-token blocks. With vision blocks the
    merge needs the kernel's log-sum-exp, which it does not differentiate: that case is forward-only
    (inference); causal-only and full attention are differentiable. `band` > 0 (non-causal only)
    restricts keys to |i - j| < band, which the kernel uses to skip blocks. Padding queries
    (segment 0) see other padding here, where the XLA path gives them the mean of all values.
    """
    heads, kv = query.shape[2], key.shape[2]
    if heads != kv:
        key = jnp.repeat(key, heads // kv, axis=2)
        value = jnp.repeat(value, heads // kv, axis=2)
    t = query.shape[1]
    pad = -t % 128
    seg = jnp.pad(segments.q_segment_ids, ((0, 0), (0, pad)))
    query, key, value = (jnp.pad(x, ((0, 0), (0, pad), (0, 0), (0, 0))) for x in (query, key, value))
    if not segments.causal:
        out, _ = _splash_call(query, key, value, seg, seg, "full", band=band)
        return out[:, :t].astype(query.dtype)
    if segments.q_block_ids is None:
        out, _ = _splash_call(query, key, value, seg, seg, "causal")
        return out[:, :t].astype(query.dtype)
    out1, lse1 = _splash_call(query, key, value, seg, seg, "causal", residuals=True)
    block = jnp.pad(segments.q_block_ids, ((0, 0), (0, pad)))
    in_block = block > 0
    slots = jnp.arange(t + pad)
    last_slot = jax.vmap(lambda b: jnp.full(t + pad + 1, -1).at[b].max(slots))(jnp.where(in_block, block, 0))
    has_later = in_block & (jnp.take_along_axis(last_slot, block, axis=1) > slots)
    # Pass 2 runs over keys shifted one slot left, so "strictly later" becomes the static upper
    # triangle including the diagonal. A query with no later block key takes the id of the key on
    # its diagonal (so its row is not empty, as the kernel requires) and is dropped when merging.
    kv2 = jnp.where(in_block, block, -1 - slots)
    kv2_next = jnp.concatenate([kv2[:, 1:], jnp.full_like(kv2[:, :1], -2 - t - pad)], axis=1)
    q2 = jnp.where(has_later, block, kv2_next)
    shift = lambda x: jnp.concatenate([x[:, 1:], jnp.zeros_like(x[:, :1])], axis=1)
    out2, lse2 = _splash_call(query, shift(key), shift(value), q2, kv2_next, "upper", residuals=True)
    lse2 = jnp.where(has_later[:, None, :], lse2, -jnp.inf)
    lse = jnp.logaddexp(lse1, lse2)
    w1 = jnp.exp(lse1 - lse).transpose(0, 2, 1)[..., None]
    w2 = jnp.exp(lse2 - lse).transpose(0, 2, 1)[..., None]
    out = w1 * out1 + w2 * jnp.where(has_later[:, :, None, None], out2, 0.0)
    return out[:, :t].astype(query.dtype)
