"""Attention in one place: the mask contract, the XLA reference path and the accelerated kernels.

Every attention in the project goes through `attend` (dense mask and/or additive bias) or
`attend_segments` (a `SegmentMask`: packed rows described by segment ids). The dense mask of a
`SegmentMask` is built by exactly one function, `make_attention_mask`; the kernels must agree with it.
"""

from __future__ import annotations

import functools
import math

import flax.struct
import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import PartitionSpec

from stts_jax.sharding_rules import LOGICAL_RULES

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
    query: Array, key: Array, value: Array, segment_ids: Array, frame_len: int, granule: int, impl: str
) -> Array:
    """Full attention within each frame of a packed buffer (`stts_jax.stts.packing`): frames contiguous,
    at most `frame_len` real slots each, each starting at a multiple of `granule` (a divisor of
    frame_len), padding slots segment 0.

    query / key / value: [batch, slots, heads, head_dim]; segment_ids: [batch, slots], 0 = padding.
    XLA: chunks of `granule` queries, each inside one frame, against the `frame_len` keys from the start
    of that frame (gathered per chunk): a kept query costs frame_len keys, as in the unpruned ViT.
    Splash: per 128-slot query block, only the key blocks its frames reach (`frame_blocks`, built from the
    segment ids in the graph): about 8 of a frame's blocks on average where a static band would run 13.
    """
    if impl == "splash":
        segments = SegmentMask.self_attention(segment_ids, causal=False)
        return splash_attention(query, key, value, segments, frame_len, frames=True)
    b, s, h, d = query.shape
    n = s // granule
    q_seg = segment_ids.reshape(b, n, granule)
    first = q_seg[:, :, 0]  # a chunk's frame: frames start on chunk boundaries, so its first slot is real
    starts = jnp.concatenate([jnp.ones((b, 1), bool), first[:, 1:] != first[:, :-1]], axis=1)
    frame_start = jax.lax.cummax(jnp.where(starts, jnp.arange(n) * granule, 0), axis=1)  # [b, n] slot
    keys = (frame_start[:, :, None] + jnp.arange(frame_len)).reshape(b, n * frame_len)
    window = lambda x, fill: jnp.take_along_axis(
        jnp.pad(x, ((0, 0), (0, frame_len)) + ((0, 0),) * (x.ndim - 2), constant_values=fill),
        keys.reshape(b, -1, *(1,) * (x.ndim - 2)),
        axis=1,
    ).reshape(b * n, frame_len, *x.shape[2:])
    kv_seg = window(segment_ids, -1).reshape(b, n, frame_len)
    mask = (q_seg[..., :, None] == kv_seg[..., None, :]) & (q_seg[..., :, None] > 0)
    out = attend(
        query.reshape(b * n, granule, h, d),
        window(key, 0),
        window(value, 0),
        mask=mask.reshape(b * n, 1, granule, frame_len),
        impl=impl,
    )
    return out.reshape(b, s, h, d)


# -- Pallas splash attention (TPU; interpret mode elsewhere) -----------------------------------------------

_KERNEL_BLOCK = 128  # splash's query / key block; sequences are padded to a multiple of it


@functools.lru_cache(maxsize=64)
def _splash_kernel(q_len: int, kv_len: int, heads: int, kind: str, band: int, interpret: bool):
    """A splash kernel for one static mask: "causal", "upper" (key slot >= query slot), or "full"
    (restricted to |key slot - query slot| < band when band > 0). It always returns the log-sum-exp.
    "frames" is "full" here: its block lists are replaced per row (`frame_blocks`)."""
    from jax.experimental.pallas.ops.tpu.splash_attention import splash_attention_kernel as sk
    from jax.experimental.pallas.ops.tpu.splash_attention import splash_attention_mask as sm

    shape = (q_len, kv_len)
    if kind == "causal":
        base = sm.CausalMask(shape)
    elif kind == "upper":  # computed lazily per block, like the causal mask
        base = sm.LocalMask(shape, window_size=(0, None), offset=0)
    elif kind == "full" and band:
        base = sm.LocalMask(shape, window_size=(band - 1, band - 1), offset=0)
    else:
        base = sm.FullMask(shape)
    b = _KERNEL_BLOCK
    sizes = sk.BlockSizes(
        block_q=b, block_kv=b, block_kv_compute=b, block_q_dkv=b, block_kv_dkv=b, block_kv_dkv_compute=b,
        block_q_dq=b, block_kv_dq=b,
    )  # fmt: skip
    with jax.ensure_compile_time_eval():  # the cached kernel's mask arrays must not be tracers
        return sk.make_splash_mha(
            sm.MultiHeadMask([base] * heads),
            head_shards=1,
            q_seq_shards=1,
            block_sizes=sizes,
            save_residuals=True,
            interpret=interpret,
        )


def frame_blocks(segment_ids: Array, frame_len: int) -> tuple[Array, Array]:
    """The splash block lists of one packed row whose frames (runs of one positive segment id, at most
    `frame_len` slots) attend within themselves: (data_next, block_mask), each [1, q_blocks, width].

    Query block i needs the key blocks lo_i..hi_i, from the block where its first frame starts to the one
    where its last frame ends (a block of padding only: itself). `width`, the static number of grid steps
    per query block, is the most any layout can need: ceil((frame_len - 1) / 128) blocks either side. A
    step past hi_i re-points at block hi_i with block_mask 0, so the kernel neither copies nor computes.
    The relation is symmetric, so the transposed lists serve the key-block-major backward (dK, dV)."""
    t = segment_ids.shape[0]
    n, reach = t // _KERNEL_BLOCK, -(-(frame_len - 1) // _KERNEL_BLOCK)
    width = min(n, 2 * reach + 1)
    slot = jnp.arange(t)
    edge = segment_ids[1:] != segment_ids[:-1]
    run_start = jax.lax.cummax(jnp.where(jnp.concatenate([jnp.ones(1, bool), edge]), slot, 0))
    run_end = jax.lax.cummin(jnp.where(jnp.concatenate([edge, jnp.ones(1, bool)]), slot, t), reverse=True)
    real = (segment_ids > 0).reshape(n, _KERNEL_BLOCK)
    own = jnp.arange(n)
    lo = jnp.where(real.any(1), jnp.where(real, run_start.reshape(n, -1), t).min(1) // _KERNEL_BLOCK, own)
    hi = jnp.where(real.any(1), jnp.where(real, run_end.reshape(n, -1), 0).max(1) // _KERNEL_BLOCK, own)
    block = lo[:, None] + jnp.arange(width)
    active = block <= hi[:, None]
    data_next = jnp.where(active, block, hi[:, None]).astype(jnp.int32)
    return data_next[None], jnp.where(active, 2, 0).astype(jnp.int32)[None]


def _row_kernel(kernel, kind: str, band: int, segment_ids: Array):
    """`kernel` itself, or for "frames" the same kernel with this row's block lists (`frame_blocks`)."""
    if kind != "frames":
        return kernel
    from jax.experimental.pallas.ops.tpu.splash_attention import splash_attention_kernel as sk
    from jax.experimental.pallas.ops.tpu.splash_attention import splash_attention_mask_info as mi

    data_next, block_mask = frame_blocks(segment_ids, band)
    forward = mi.MaskInfo(data_next, None, block_mask, None, None)
    by_key = mi.MaskInfo(data_next.transpose(0, 2, 1), None, block_mask.transpose(0, 2, 1), None, None)
    by_query = forward if kernel.dq_mask_info is not None else None
    return sk.SplashAttentionKernel(forward, by_query, by_key, **kernel.kwargs)


def splash_block_pairs(length: int, kind: str, band: int = 0) -> int:
    """(query block, key block) pairs one splash pass computes over `length` slots (a multiple of 128)
    for its static mask ("causal", "upper", or "full" within `band`); the kernel skips all others.
    XLA's cost analysis cannot see inside the kernel, so its cost is counted from these."""
    kernel = _splash_kernel(length, length, 1, kind, band, True)
    return int(np.count_nonzero(np.asarray(kernel.fwd_mask_info.block_mask)[0]))


def _on_tpu_or_interpreted(run, *args):
    """`run(interpret, *args)` compiled for the platform the program is lowered for (which is not
    `jax.default_backend()` when compiling ahead of time for a TPU topology from a CPU host)."""
    return jax.lax.platform_dependent(*args, tpu=functools.partial(run, False), default=functools.partial(run, True))


def _splash_pass(mask: tuple[str, int], q: Array, k: Array, v: Array, q_ids: Array, kv_ids: Array):
    """One kernel pass over [b, h, t, d] tensors and ids [b, t] -> (out [b, h, t, d], lse [b, h, t])."""
    from jax.experimental.pallas.ops.tpu.splash_attention import splash_attention_kernel as sk

    def run(interpret, q, k, v, q_ids, kv_ids):
        kernel = _splash_kernel(q.shape[2], k.shape[2], q.shape[1], *mask, interpret)

        def one(qi, ki, vi, qs, ks):
            out, (lse,) = _row_kernel(kernel, *mask, qs)(qi, ki, vi, segment_ids=sk.SegmentIds(q=qs, kv=ks))
            return out, lse

        return jax.vmap(one)(q, k, v, q_ids, kv_ids)

    return _on_tpu_or_interpreted(run, q, k, v, q_ids, kv_ids)


def _splash_pass_grads(mask: tuple[str, int], q, k, v, q_ids, kv_ids, out, lse, d_out):
    """The kernel's own backward for one pass, run against the given `out` / `lse` -> (dq, dk, dv)."""
    from jax.experimental.pallas.ops.tpu.splash_attention import splash_attention_kernel as sk

    def run(interpret, q, k, v, q_ids, kv_ids, out, lse, d_out):
        kernel = _splash_kernel(q.shape[2], k.shape[2], q.shape[1], *mask, interpret)

        def one(qi, ki, vi, qs, ks, oi, li, doi):
            row = _row_kernel(kernel, *mask, qs)
            residuals = (qi, ki, vi, sk.SegmentIds(q=qs, kv=ks), None, oi, li, row.dq_mask_info, row.dkv_mask_info)
            grads = sk._splash_attention_bwd(**row.kwargs, res=residuals, do=doi)
            return grads[3:6]  # (q, k, v) in the order of the kernel's inputs

        return jax.vmap(one)(q, k, v, q_ids, kv_ids, out, lse, d_out)

    return _on_tpu_or_interpreted(run, q, k, v, q_ids, kv_ids, out, lse, d_out)


def _merged_forward(masks, q, keys, values, q_ids, kv_ids, q_valid):
    outs, lses = [], []
    for mask, k, v, qi, ki, valid in zip(masks, keys, values, q_ids, kv_ids, q_valid, strict=True):
        out, lse = _splash_pass(mask, q, k, v, qi, ki)
        if valid is not None:
            out = jnp.where(valid[:, None, :, None], out, 0)
            lse = jnp.where(valid[:, None, :], lse, -jnp.inf)
        outs.append(out.astype(jnp.float32))
        lses.append(lse)
    lse = functools.reduce(jnp.logaddexp, lses)
    out = sum(jnp.exp(part_lse - lse)[..., None] * part for part, part_lse in zip(outs, lses, strict=True))
    return out.astype(q.dtype), lse


@functools.partial(jax.custom_vjp, nondiff_argnums=(0,))
def _splash_passes(masks, q, keys, values, q_ids, kv_ids, q_valid) -> Array:
    """Attention over the union of disjoint key sets, one kernel pass each, merged by log-sum-exp.

    masks: static ((kind, band), ...) per pass; q: [b, h, t, d], pre-scaled; keys / values: per pass
    [b, h, s, d]; q_ids / kv_ids: per pass segment ids [b, t] / [b, s]; q_valid: per pass [b, t] bool
    or None, the queries that have a key in that pass (the others are left out of the merge).

    The gradient of the merged softmax is, for every key, the single-softmax formula with the
    merged output and log-sum-exp: dS = P (dO . V - rowsum(dO * O)), P = exp(S - lse). So the
    backward runs each pass's kernel backward against the merged residuals and adds the results.
    """
    return _merged_forward(masks, q, keys, values, q_ids, kv_ids, q_valid)[0]


def _splash_passes_fwd(masks, q, keys, values, q_ids, kv_ids, q_valid):
    out, lse = _merged_forward(masks, q, keys, values, q_ids, kv_ids, q_valid)
    return out, (q, keys, values, q_ids, kv_ids, q_valid, out, lse)


def _splash_passes_bwd(masks, residuals, d_out):
    q, keys, values, q_ids, kv_ids, q_valid, out, lse = residuals
    d_out = d_out.astype(q.dtype)
    dq, dks, dvs = jnp.zeros(q.shape, jnp.float32), [], []
    for mask, k, v, qi, ki, valid in zip(masks, keys, values, q_ids, kv_ids, q_valid, strict=True):
        # A query left out of this pass must contribute nothing: a zero dO makes every term zero.
        pass_d_out = d_out if valid is None else jnp.where(valid[:, None, :, None], d_out, 0).astype(q.dtype)
        dq_pass, dk, dv = _splash_pass_grads(mask, q, k, v, qi, ki, out, lse, pass_d_out)
        dq += dq_pass.astype(jnp.float32)
        dks.append(dk.astype(k.dtype))
        dvs.append(dv.astype(v.dtype))
    no_grad = (None,) * len(masks)  # ids and validity are integer / boolean
    return dq.astype(q.dtype), tuple(dks), tuple(dvs), no_grad, no_grad, no_grad


_splash_passes.defvjp(_splash_passes_fwd, _splash_passes_bwd)


def _splash_per_shard(masks, q, keys, values, q_ids, kv_ids, q_valid) -> Array:
    """`_splash_passes`, under the mesh being traced for (if any) run once per shard of rows and heads.

    XLA cannot partition a Mosaic kernel, so a program for several devices must call it inside a
    `shard_map`. Rows are split like the "batch" logical axis and heads like "heads" (the rules
    table of `stts_jax.sharding_rules`), over the mesh axes that divide them; other axes replicate.
    The mesh comes from `jax.set_mesh` / `jax.sharding.use_abstract_mesh` around the trace.
    """
    mesh = jax.sharding.get_abstract_mesh()
    run = functools.partial(_splash_passes, masks)
    if mesh.empty or mesh.size == 1:
        return run(q, keys, values, q_ids, kv_ids, q_valid)
    rules = dict(LOGICAL_RULES)

    def dividing(logical: str, size: int) -> tuple[str, ...]:
        names = [a for a in rules.get(logical) or () if a in mesh.axis_names and mesh.shape[a] > 1]
        while names and size % math.prod(mesh.shape[a] for a in names):
            names.pop()
        return tuple(names)

    rows, heads = dividing("batch", q.shape[0]), dividing("heads", q.shape[1])
    x_spec = PartitionSpec(rows or None, heads or None)
    ids_spec = PartitionSpec(rows or None)
    n = len(masks)
    return jax.shard_map(
        run,
        mesh=mesh,
        in_specs=(x_spec, (x_spec,) * n, (x_spec,) * n, (ids_spec,) * n, (ids_spec,) * n, (ids_spec,) * n),
        out_specs=x_spec,
        check_vma=False,  # the Pallas call carries no varying-axes annotations
    )(q, keys, values, q_ids, kv_ids, q_valid)


def splash_attention(
    query: Array, key: Array, value: Array, segments: SegmentMask, band: int = 0, frames: bool = False
) -> Array:
    """`attend_segments` on the Pallas splash kernel, equal to `make_attention_mask` on real tokens.

    Splash masks are static (causal / full) and-ed with dynamic segment ids. A causal mask with a
    bidirectional vision block is the union of two disjoint key sets, each one splash pass:
    (1) causal keys of the same segment; (2) strictly later keys of the same block, expressed by
    giving tokens outside any block ids that never match. The two partial softmaxes are merged by
    their log-sum-exps, and the backward pass runs each kernel's backward against the merged
    output (`_splash_passes`), so every case is differentiable. Block ids must be unique within a
    row (the VLM uses the segment id). Self-attention only; lengths are padded to the kernel's
    128-token blocks. `band` > 0 (non-causal only) restricts keys to |i - j| < band, which the
    kernel uses to skip blocks; with `frames` the runs of one segment id are frames of at most `band`
    slots and each query block visits only the key blocks its frames reach (`frame_blocks`).
    Padding queries (segment 0) see other padding here, where the XLA path gives them the mean of all
    values. On TPU this lowers to the Mosaic kernel; on any other
    platform to the same kernel in Pallas interpret mode.
    """
    heads, kv = query.shape[2], key.shape[2]
    if heads != kv:
        key = jnp.repeat(key, heads // kv, axis=2)
        value = jnp.repeat(value, heads // kv, axis=2)
    b, t, _, d = query.shape
    pad = -t % _KERNEL_BLOCK
    seg = jnp.pad(segments.q_segment_ids, ((0, 0), (0, pad)))
    # splash takes [heads, len, dim] per example and applies no scale itself
    to_kernel = lambda x: jnp.pad(x, ((0, 0), (0, pad), (0, 0), (0, 0))).transpose(0, 2, 1, 3)
    q, k, v = to_kernel(query * d**-0.5), to_kernel(key), to_kernel(value)
    if not segments.causal or segments.q_block_ids is None:
        mask = ("causal", 0) if segments.causal else ("frames" if frames else "full", band)
        out = _splash_per_shard((mask,), q, (k,), (v,), (seg,), (seg,), (None,))
        return out.transpose(0, 2, 1, 3)[:, :t]
    block = jnp.pad(segments.q_block_ids, ((0, 0), (0, pad)))
    in_block = block > 0
    slots = jnp.arange(t + pad)
    last_slot = jax.vmap(lambda row: jnp.full(t + pad + 1, -1).at[row].max(slots))(jnp.where(in_block, block, 0))
    has_later = in_block & (jnp.take_along_axis(last_slot, block, axis=1) > slots)
    # Pass 2 runs over keys shifted one slot left, so "strictly later" becomes the static upper
    # triangle including the diagonal. A query with no later block key takes the id of the key on
    # its diagonal (so its row is not empty, as the kernel requires) and is left out of the merge.
    kv2 = jnp.where(in_block, block, -1 - slots)
    kv2_next = jnp.concatenate([kv2[:, 1:], jnp.full_like(kv2[:, :1], -2 - t - pad)], axis=1)
    q2 = jnp.where(has_later, block, kv2_next)
    shift = lambda x: jnp.concatenate([x[:, :, 1:], jnp.zeros_like(x[:, :, :1])], axis=2)
    out = _splash_per_shard(
        (("causal", 0), ("upper", 0)), q, (k, shift(k)), (v, shift(v)), (seg, q2), (seg, kv2_next), (None, has_later)
    )
    return out.transpose(0, 2, 1, 3)[:, :t]
