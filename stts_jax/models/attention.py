"""Attention in one place: the mask contract, the XLA reference path and the accelerated kernels.

Every attention in the project goes through `attend` (dense mask and/or additive bias),
`attend_segments` (a `SegmentMask`: packed rows described by segment ids) or `attend_packed_frames`
(the pruned ViT's packed frames). The dense mask of a `SegmentMask` is built by exactly one function,
`make_attention_mask`; the kernels must agree with it. `impl` picks the path: "xla" (the reference),
"jax" (`jax.nn.dot_product_attention` with the dense mask), "splash" (Pallas TPU kernels), "gpu" (cuDNN
flash attention for the ViT, Pallas GPU kernels for the LLM); the Pallas kernels run in interpret mode
off their platform.
"""

from __future__ import annotations

import dataclasses
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
    bf16/fp16 where cuDNN takes the shapes, else its XLA path), "splash" (Pallas TPU kernel; used when
    there is neither mask nor bias, else the XLA path), "gpu" (`fused_attention`, cuDNN flash attention,
    when there is no mask and the bias, if any, is one value per key [batch, 1, 1, kv_len]; else XLA).
    """
    if impl == "splash" and mask is None and bias is None:  # plain full attention (the unpacked ViT)
        ones = jnp.ones(query.shape[:2], jnp.int32)
        return splash_attention(query, key, value, SegmentMask.self_attention(ones, causal=False))
    if impl == "gpu" and mask is None and (bias is None or bias.shape[1:3] == (1, 1)):
        return fused_attention(query, key, value, key_bias=bias)
    scale = query.shape[-1] ** -0.5
    if mask is not None:
        mask = jnp.broadcast_to(mask, (query.shape[0], mask.shape[1], query.shape[1], key.shape[1]))
    if bias is not None:
        bias = jnp.broadcast_to(bias, (query.shape[0], bias.shape[1], query.shape[1], key.shape[1]))
    if impl == "jax":
        return _jax_attention(query, key, value, mask, bias, scale)
    return _xla_attention(query, key, value, mask, bias, scale)


def _cudnn_takes(query: Array, head_dim: int, *lengths: int) -> bool:
    """Whether `jax.nn.dot_product_attention` may use cuDNN here, decided when tracing (cuDNN cannot even be
    traced without a GPU, so a program compiled ahead of time from a CPU host takes the XLA path): on a
    GPU, in bf16/fp16, head_dim a multiple of 8 up to 128 (256 from Hopper on, not known when tracing),
    and even lengths: JAX's cuDNN rule for training takes every call as biased (jax 0.10: `bias is not
    None` on its placeholder), and cuDNN's biased backward refuses odd lengths (729 patches, 9-key pools).
    """
    return (
        jax.default_backend() == "gpu"
        and query.dtype in (jnp.bfloat16, jnp.float16)
        and head_dim % 8 == 0
        and head_dim <= 128
        and all(n % 2 == 0 for n in lengths)
    )


def _jax_attention(
    query: Array, key: Array, value: Array, mask: Array | None, bias: Array | None, scale: float
) -> Array:
    """`attend` on `jax.nn.dot_product_attention`; mask / bias already [b, h|1, t, s]."""
    (b, t, heads, d), (s, kv) = query.shape, key.shape[1:3]
    cudnn = _cudnn_takes(query, d, t, s)
    if cudnn:
        # JAX's cuDNN batching rule (under vmap, e.g. the stacked-layer init) reshapes a batched bias or mask
        # to [batch, heads, q_len, kv_len]: one broadcast over heads fails ("cannot reshape array of shape
        # (3, 1, 1, 1, 1) into shape (3, 4, 1, 1)"), so cuDNN gets them per head.
        per_head = lambda x: None if x is None else jnp.broadcast_to(x, (b, heads, t, s))
        mask, bias = per_head(mask), per_head(bias)
    return jax.nn.dot_product_attention(
        query,
        jnp.repeat(key, heads // kv, axis=2) if heads != kv else key,
        jnp.repeat(value, heads // kv, axis=2) if heads != kv else value,
        bias=bias,
        mask=mask,
        scale=scale,
        implementation="cudnn" if cudnn else None,
    )


_HIDDEN_KEY = -30_000.0  # a key column entry that drowns any logit, finite in fp16 (so its gradient is 0, not nan)


def fused_attention(
    query: Array,
    key: Array,
    value: Array,
    *,
    key_bias: Array | None = None,
    kv_lengths: Array | None = None,
) -> Array:
    """Full attention with no materialised mask or logits: cuDNN's flash attention on a GPU in bf16/fp16,
    elsewhere the XLA path of `jax.nn.dot_product_attention` with the same arguments.

    query: [batch, q_len, heads, head_dim]; key / value: [batch, kv_len, kv_heads, head_dim].
    key_bias: [batch, 1, 1, kv_len] or None, added to every query's logit of that key.
    kv_lengths: [batch] int or None; item i sees only its first kv_lengths[i] keys (cuDNN's padding mask).
    cuDNN's rules (`_cudnn_takes`) are met by padding: head dims with zeros to a multiple of 8, odd
    lengths by one slot. A per-key bias is one more head-dim column, so no [q_len, kv_len] bias is built:
    q gets 1, k gets bias / scale, v gets 0, and q'.k' * scale = q.k * scale + bias (the bias's gradient
    comes through k'). Without `kv_lengths` the same column hides an added key slot (`_HIDDEN_KEY`):
    lengths would do it, but JAX's cuDNN batching rule cannot take unbatched lengths with a vmapped
    query (the stacked-layer init).
    """
    b, t, _, d = query.shape
    s = key.shape[1]
    scale = d**-0.5
    slots = lambda x: jnp.pad(x, ((0, 0), (0, x.shape[1] % 2), (0, 0), (0, 0)))
    query, key, value = slots(query), slots(key), slots(value)
    if key_bias is not None or (s % 2 and kv_lengths is None):
        column = jnp.zeros((b, s), jnp.float32) if key_bias is None else key_bias.reshape(b, s) / scale
        column = jnp.pad(column, ((0, 0), (0, s % 2)), constant_values=_HIDDEN_KEY).astype(key.dtype)
        query = jnp.concatenate([query, jnp.ones((*query.shape[:3], 1), query.dtype)], axis=-1)
        key = jnp.concatenate([key, jnp.broadcast_to(column[:, :, None, None], (*key.shape[:3], 1))], axis=-1)
        value = jnp.concatenate([value, jnp.zeros((*value.shape[:3], 1), value.dtype)], axis=-1)
    width = -(-query.shape[-1] // 8) * 8
    dims = lambda x: jnp.pad(x, ((0, 0), (0, 0), (0, 0), (0, width - x.shape[-1])))
    out = jax.nn.dot_product_attention(
        dims(query),
        dims(key),
        dims(value),
        scale=scale,
        key_value_seq_lengths=None if kv_lengths is None else kv_lengths.astype(jnp.int32),
        implementation="cudnn" if _cudnn_takes(query, width, query.shape[1], key.shape[1]) else None,
    )
    return out[:, :t, :, :d]


def attend_segments(query: Array, key: Array, value: Array, segments: SegmentMask, *, impl: str = "xla") -> Array:
    """Attention over packed rows described by a `SegmentMask` (shapes as in `attend`). The kernels
    ("splash", "gpu") run self-attention only; a KV cache longer than the queries takes the XLA path."""
    if query.shape[1] == key.shape[1] and impl == "splash":
        return splash_attention(query, key, value, segments)
    if query.shape[1] == key.shape[1] and impl == "gpu":
        return gpu_attention(query, key, value, segments)
    return attend(query, key, value, mask=make_attention_mask(segments), impl=impl)


def attend_packed_frames(
    query: Array,
    key: Array,
    value: Array,
    segment_ids: Array,
    frame_len: int,
    granule: int,
    impl: str,
    key_bias: Array | None = None,
) -> Array:
    """Full attention within each frame of a packed buffer (`stts_jax.stts.packing`): frames contiguous,
    at most `frame_len` real slots each, each starting at a multiple of `granule` (a divisor of
    frame_len), padding slots segment 0.

    query / key / value: [batch, slots, heads, head_dim]; segment_ids: [batch, slots], 0 = padding.
    XLA: chunks of `granule` queries, each inside one frame, against the `frame_len` keys from the start
    of that frame (gathered per chunk): a kept query costs frame_len keys, as in the unpruned ViT.
    GPU: the same chunks through `fused_attention`, with no mask: the keys of a chunk's frame are a prefix
    of its window (the frame's slots run from its start), so one length per chunk says it all. cuDNN still
    runs whole query tiles (64-128 rows) per 27-query chunk, and the gathered windows are frame_len /
    granule times the keys (27x at Molmo2 sizes, as on the XLA path).
    Splash: per 128-slot query block, only the key blocks its frames reach (`frame_blocks`, built from the
    segment ids in the graph): about 8 of a frame's blocks on average where a static band would run 13.
    Padding queries get the mean of the values (XLA) or whatever finite value the kernels give them.
    key_bias: [batch, slots] or None, added to every logit of that key (ToMe's proportional attention,
    `stts_jax.stts.tome`); the splash kernel takes no bias, so with one the splash impl runs the XLA chunks.
    """
    if impl == "splash" and key_bias is None:
        segments = SegmentMask.self_attention(segment_ids, causal=False)
        return splash_attention(query, key, value, segments, frame_len, frames=True)
    b, s, h, d = query.shape
    n = s // granule
    q_seg = segment_ids.reshape(b, n, granule)
    first = q_seg[:, :, 0]  # a chunk's frame: frames start on chunk boundaries, so its first slot is real
    starts = jnp.concatenate([jnp.ones((b, 1), bool), first[:, 1:] != first[:, :-1]], axis=1)
    frame_start = jax.lax.cummax(jnp.where(starts, jnp.arange(n) * granule, 0), axis=1)  # [b, n] slot
    # One contiguous slice per chunk (a gather of whole windows; its transpose adds whole windows back),
    # which XLA:CPU runs about 1.5x faster, forward and backward, than gathering slot by slot.
    slices = jax.vmap(jax.vmap(lambda row, start: jax.lax.dynamic_slice_in_dim(row, start, frame_len), (None, 0)))
    window = lambda x, fill: slices(
        jnp.pad(x, ((0, 0), (0, frame_len)) + ((0, 0),) * (x.ndim - 2), constant_values=fill), frame_start
    ).reshape(b * n, frame_len, *x.shape[2:])
    kv_seg = window(segment_ids, -1).reshape(b, n, frame_len)
    chunks = query.reshape(b * n, granule, h, d)
    if impl == "gpu":
        # At least one key keeps every cuDNN row defined (a chunk of padding only has none).
        kv_lengths = jnp.maximum(jnp.where(first > 0, (kv_seg == first[..., None]).sum(-1), 0), 1)
        bias = None if key_bias is None else window(key_bias, 0).reshape(b * n, 1, 1, frame_len)
        out = fused_attention(
            chunks, window(key, 0), window(value, 0), key_bias=bias, kv_lengths=kv_lengths.reshape(-1)
        )
        return out.reshape(b, s, h, d)
    mask = (q_seg[..., :, None] == kv_seg[..., None, :]) & (q_seg[..., :, None] > 0)
    bias = None if key_bias is None else window(key_bias, 0).reshape(b * n, 1, 1, frame_len)
    out = attend(
        chunks,
        window(key, 0),
        window(value, 0),
        mask=mask.reshape(b * n, 1, granule, frame_len),
        bias=bias,
        impl="xla" if impl == "splash" else impl,
    )
    return out.reshape(b, s, h, d)


# -- Kernel passes merged by log-sum-exp (splash on TPU, Pallas GPU) ----------------------------------------

_KERNEL_BLOCK = 128  # the kernels' query / key block; sequences are padded to a multiple of it


def _compiled_or_interpreted(platforms: tuple[str, ...], run, *args):
    """`run(interpret, *args)`: the compiled kernel when the program is lowered for one of `platforms`
    (which is not `jax.default_backend()` when compiling ahead of time for a TPU topology from a CPU
    host), the same kernel in Pallas interpret mode on any other."""
    compiled = functools.partial(run, False)
    return jax.lax.platform_dependent(*args, **dict.fromkeys(platforms, compiled), default=functools.partial(run, True))


def _merged_forward(passes, q, keys, values, ids, q_valid):
    outs, lses = [], []
    for kernel_pass, k, v, pass_ids, valid in zip(passes, keys, values, ids, q_valid, strict=True):
        out, lse = kernel_pass.forward(q, k, v, pass_ids)
        if valid is not None:
            out = jnp.where(valid[:, None, :, None], out, 0)
            lse = jnp.where(valid[:, None, :], lse, -jnp.inf)
        outs.append(out.astype(jnp.float32))
        lses.append(lse)
    lse = functools.reduce(jnp.logaddexp, lses)
    out = sum(jnp.exp(part_lse - lse)[..., None] * part for part, part_lse in zip(outs, lses, strict=True))
    return out.astype(q.dtype), lse


@functools.partial(jax.custom_vjp, nondiff_argnums=(0,))
def _merged_passes(passes, q, keys, values, ids, q_valid) -> Array:
    """Attention over the union of disjoint key sets, one kernel pass each, merged by log-sum-exp.

    passes: static, one object per pass with `forward(q, k, v, ids) -> (out, lse)` and
    `backward(q, k, v, ids, out, lse, d_out) -> (dq, dk, dv)` (`_SplashPass`, `_MhaPass`); q:
    [b, h, t, d], pre-scaled; keys / values: per pass [b, h, s, d]; ids: per pass a tuple of [b, t] int
    arrays, the pass's own; q_valid: per pass [b, t] bool or None, the queries that have a key in that
    pass (the others are left out of the merge). lse is the natural log-sum-exp [b, h, t].

    The gradient of the merged softmax is, for every key, the single-softmax formula with the
    merged output and log-sum-exp: dS = P (dO . V - rowsum(dO * O)), P = exp(S - lse). So the
    backward runs each pass's kernel backward against the merged residuals and adds the results.
    """
    return _merged_forward(passes, q, keys, values, ids, q_valid)[0]


def _merged_passes_fwd(passes, q, keys, values, ids, q_valid):
    out, lse = _merged_forward(passes, q, keys, values, ids, q_valid)
    return out, (q, keys, values, ids, q_valid, out, lse)


def _merged_passes_bwd(passes, residuals, d_out):
    q, keys, values, ids, q_valid, out, lse = residuals
    d_out = d_out.astype(q.dtype)
    dq, dks, dvs = jnp.zeros(q.shape, jnp.float32), [], []
    for kernel_pass, k, v, pass_ids, valid in zip(passes, keys, values, ids, q_valid, strict=True):
        # A query left out of this pass must contribute nothing: a zero dO and an infinite lse make
        # P = exp(S - lse) zero, so no key's logit, however large, can overflow into inf * 0.
        pass_d_out, pass_lse = d_out, lse
        if valid is not None:
            pass_d_out = jnp.where(valid[:, None, :, None], d_out, 0).astype(q.dtype)
            pass_lse = jnp.where(valid[:, None, :], lse, jnp.inf)
        dq_pass, dk, dv = kernel_pass.backward(q, k, v, pass_ids, out, pass_lse, pass_d_out)
        dq += dq_pass.astype(jnp.float32)
        dks.append(dk.astype(k.dtype))
        dvs.append(dv.astype(v.dtype))
    no_grad = jax.tree.map(lambda _: None, (ids, q_valid))  # ids and validity are integer / boolean
    return dq.astype(q.dtype), tuple(dks), tuple(dvs), *no_grad


_merged_passes.defvjp(_merged_passes_fwd, _merged_passes_bwd)


def _passes_per_shard(passes, q, keys, values, ids, q_valid) -> Array:
    """`_merged_passes`, under the mesh being traced for (if any) run once per shard of rows and heads.

    XLA cannot partition a Mosaic or Triton kernel, so a program for several devices must call it inside
    a `shard_map`. Rows are split like the "batch" logical axis and heads like "heads" (the rules
    table of `stts_jax.sharding_rules`), over the mesh axes that divide them; other axes replicate.
    The mesh comes from `jax.set_mesh` / `jax.sharding.use_abstract_mesh` around the trace.
    """
    mesh = jax.sharding.get_abstract_mesh()
    run = functools.partial(_merged_passes, passes)
    if mesh.empty or mesh.size == 1:
        return run(q, keys, values, ids, q_valid)
    rules = dict(LOGICAL_RULES)

    def dividing(logical: str, size: int) -> tuple[str, ...]:
        names = [a for a in rules.get(logical) or () if a in mesh.axis_names and mesh.shape[a] > 1]
        while names and size % math.prod(mesh.shape[a] for a in names):
            names.pop()
        return tuple(names)

    rows, heads = dividing("batch", q.shape[0]), dividing("heads", q.shape[1])
    x_spec = PartitionSpec(rows or None, heads or None)
    ids_spec = PartitionSpec(rows or None)
    n = len(passes)
    return jax.shard_map(
        run,
        mesh=mesh,
        in_specs=(
            x_spec,
            (x_spec,) * n,
            (x_spec,) * n,
            tuple((ids_spec,) * len(pass_ids) for pass_ids in ids),
            (ids_spec,) * n,
        ),
        out_specs=x_spec,
        check_vma=False,  # the Pallas call carries no varying-axes annotations
    )(q, keys, values, ids, q_valid)


def _kernel_layout(query: Array, key: Array, value: Array, segments: SegmentMask):
    """Self-attention inputs as the passes take them: kv heads repeated to the query heads, lengths padded
    to the kernels' blocks, [b, h, t, d] with q pre-scaled -> (q, k, v, segment ids, block ids or None)."""
    heads, kv = query.shape[2], key.shape[2]
    if heads != kv:
        key = jnp.repeat(key, heads // kv, axis=2)
        value = jnp.repeat(value, heads // kv, axis=2)
    t, d = query.shape[1], query.shape[3]
    pad = -t % _KERNEL_BLOCK
    ids = lambda x: None if x is None else jnp.pad(x, ((0, 0), (0, pad)))
    to_kernel = lambda x: jnp.pad(x, ((0, 0), (0, pad), (0, 0), (0, 0))).transpose(0, 2, 1, 3)
    q, k, v = to_kernel(query * d**-0.5), to_kernel(key), to_kernel(value)
    return q, k, v, ids(segments.q_segment_ids), ids(segments.q_block_ids)


def _has_later_block_key(block: Array) -> Array:
    """[b, t] block ids (0 = none) -> bool [b, t]: the token's block has a token at a later slot."""
    t = block.shape[1]
    in_block = block > 0
    slots = jnp.arange(t)
    last_slot = jax.vmap(lambda row: jnp.full(t + 1, -1).at[row].max(slots))(jnp.where(in_block, block, 0))
    return in_block & (jnp.take_along_axis(last_slot, block, axis=1) > slots)


# -- Pallas splash attention (TPU; interpret mode elsewhere) -----------------------------------------------


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


@dataclasses.dataclass(frozen=True)
class _SplashPass:
    """One splash kernel pass over a static mask (`_splash_kernel`: "causal", "upper", "full" within
    `band`, or "frames" of at most `band` slots); ids = (query segment ids, key segment ids)."""

    kind: str
    band: int = 0

    def forward(self, q: Array, k: Array, v: Array, ids: tuple[Array, Array]) -> tuple[Array, Array]:
        """[b, h, t, d] tensors -> (out [b, h, t, d], lse [b, h, t])."""
        from jax.experimental.pallas.ops.tpu.splash_attention import splash_attention_kernel as sk

        def run(interpret, q, k, v, q_ids, kv_ids):
            kernel = _splash_kernel(q.shape[2], k.shape[2], q.shape[1], self.kind, self.band, interpret)

            def one(qi, ki, vi, qs, ks):
                row = _row_kernel(kernel, self.kind, self.band, qs)
                out, (lse,) = row(qi, ki, vi, segment_ids=sk.SegmentIds(q=qs, kv=ks))
                return out, lse

            return jax.vmap(one)(q, k, v, q_ids, kv_ids)

        return _compiled_or_interpreted(("tpu",), run, q, k, v, *ids)

    def backward(self, q, k, v, ids, out, lse, d_out) -> tuple[Array, Array, Array]:
        """The kernel's own backward, run against the given `out` / `lse` -> (dq, dk, dv)."""
        from jax.experimental.pallas.ops.tpu.splash_attention import splash_attention_kernel as sk

        def run(interpret, q, k, v, q_ids, kv_ids, out, lse, d_out):
            kernel = _splash_kernel(q.shape[2], k.shape[2], q.shape[1], self.kind, self.band, interpret)

            def one(qi, ki, vi, qs, ks, oi, li, doi):
                row = _row_kernel(kernel, self.kind, self.band, qs)
                segment_ids = sk.SegmentIds(q=qs, kv=ks)
                residuals = (qi, ki, vi, segment_ids, None, oi, li, row.dq_mask_info, row.dkv_mask_info)
                grads = sk._splash_attention_bwd(**row.kwargs, res=residuals, do=doi)
                return grads[3:6]  # (q, k, v) in the order of the kernel's inputs

            return jax.vmap(one)(q, k, v, q_ids, kv_ids, out, lse, d_out)

        return _compiled_or_interpreted(("tpu",), run, q, k, v, *ids, out, lse, d_out)


def splash_attention(
    query: Array, key: Array, value: Array, segments: SegmentMask, band: int = 0, frames: bool = False
) -> Array:
    """`attend_segments` on the Pallas splash kernel, equal to `make_attention_mask` on real tokens.

    Splash masks are static (causal / full) and-ed with dynamic segment ids. A causal mask with a
    bidirectional vision block is the union of two disjoint key sets, each one splash pass:
    (1) causal keys of the same segment; (2) strictly later keys of the same block, expressed by
    giving tokens outside any block ids that never match. The two partial softmaxes are merged by
    their log-sum-exps, and the backward pass runs each kernel's backward against the merged
    output (`_merged_passes`), so every case is differentiable. Block ids must be unique within a
    row (the VLM uses the segment id). Self-attention only; lengths are padded to the kernel's
    128-token blocks. `band` > 0 (non-causal only) restricts keys to |i - j| < band, which the
    kernel uses to skip blocks; with `frames` the runs of one segment id are frames of at most `band`
    slots and each query block visits only the key blocks its frames reach (`frame_blocks`).
    Padding queries (segment 0) see other padding here, where the XLA path gives them the mean of all
    values. On TPU this lowers to the Mosaic kernel; on any other
    platform to the same kernel in Pallas interpret mode.
    """
    t = query.shape[1]
    q, k, v, seg, block = _kernel_layout(query, key, value, segments)
    if not segments.causal or block is None:
        kind = "causal" if segments.causal else ("frames" if frames else "full")
        out = _passes_per_shard((_SplashPass(kind, band),), q, (k,), (v,), ((seg, seg),), (None,))
        return out.transpose(0, 2, 1, 3)[:, :t]
    length = q.shape[2]
    has_later = _has_later_block_key(block)
    # Pass 2 runs over keys shifted one slot left, so "strictly later" becomes the static upper
    # triangle including the diagonal. A query with no later block key takes the id of the key on
    # its diagonal (so its row is not empty, as the kernel requires) and is left out of the merge.
    slots = jnp.arange(length)
    kv2 = jnp.where(block > 0, block, -1 - slots)
    kv2_next = jnp.concatenate([kv2[:, 1:], jnp.full_like(kv2[:, :1], -2 - length)], axis=1)
    q2 = jnp.where(has_later, block, kv2_next)
    shift = lambda x: jnp.concatenate([x[:, :, 1:], jnp.zeros_like(x[:, :, :1])], axis=2)
    out = _passes_per_shard(
        (_SplashPass("causal"), _SplashPass("upper")),
        q,
        (k, shift(k)),
        (v, shift(v)),
        ((seg, seg), (q2, kv2_next)),
        (None, has_later),
    )
    return out.transpose(0, 2, 1, 3)[:, :t]


# -- Pallas GPU flash attention (Triton on GPUs; interpret mode elsewhere) ---------------------------------

_GPU_PLATFORMS = ("cuda", "rocm")


def _take_slots(x: Array, index: Array) -> Array:
    """x: [b, h, t, ...], index: [b, t'] slots -> [b, h, t', ...], row by row."""
    b, t = index.shape
    return jnp.take_along_axis(x, index.reshape(b, 1, t, *(1,) * (x.ndim - 3)), axis=2)


def _later_in_block_order(block: Array) -> tuple[Array, tuple[Array, Array, Array]]:
    """The "strictly later keys of my block" pass as a causal one over a reordered row.

    block: [b, t] block ids, 0 = none. Sorted by (block id, slot), the non-block tokens last, every block
    is one run in slot order; reversed, its later tokens come first, so "strictly later" is "strictly
    earlier", and with the keys shifted one slot right (key slot a holds the token after query slot a's,
    slot 0 an empty key) the causal diagonal itself. The kernel takes one id array for queries and keys:
    key slot a's id is its token's block (or a unique negative id outside blocks), and a query with a
    later block token has the same block as the token on its key slot, so one array serves both (a
    query without one sees a stranger at most and is left out of the merge).
    Returns (kernel ids [b, t], (q_index, kv_index, q_inverse)): query slot a holds token q_index[a], key
    slot a token kv_index[a] (t = the empty key), and token i is at query slot q_inverse[i].
    """
    b, t = block.shape
    order = jnp.argsort(jnp.where(block > 0, block, jnp.iinfo(jnp.int32).max), axis=1, stable=True)
    q_index = order[:, ::-1]
    kv_index = jnp.concatenate([jnp.full((b, 1), t, order.dtype), q_index[:, :-1]], axis=1)
    kv_block = jnp.take_along_axis(jnp.pad(block, ((0, 0), (0, 1))), kv_index, axis=1)
    kernel_ids = jnp.where(kv_block > 0, kv_block, -1 - jnp.arange(t, dtype=block.dtype))
    return kernel_ids, (q_index, kv_index, jnp.argsort(q_index, axis=1))


def _mha_rows(x: Array) -> Array:
    """[b, h, t, d] -> [b * h, t, 1, d]: the kernel's [batch, len, heads, dim] with heads as rows (no copy)."""
    b, h, t, d = x.shape
    return x.reshape(b * h, t, 1, d)


def _mha_forward(q: Array, k: Array, v: Array, ids: Array, causal: bool) -> tuple[Array, Array]:
    """`jax.experimental.pallas.ops.gpu.attention.mha` on [b, h, t, d] (q pre-scaled) with one id array
    [b, t] for queries and keys -> (out [b, h, t, d], natural lse [b, h, t]); the kernel's is base 2."""
    from jax.experimental.pallas.ops.gpu import attention as gpu_kernel

    def run(interpret, q, k, v, ids):
        b, h, t, d = q.shape
        out, lse = gpu_kernel.mha(
            _mha_rows(q),
            _mha_rows(k),
            _mha_rows(v),
            jnp.repeat(ids, h, axis=0),
            sm_scale=1.0,
            causal=causal,
            interpret=interpret,
            return_residuals=True,
        )
        return out.reshape(b, h, t, d), lse.reshape(b, h, t) * math.log(2)

    return _compiled_or_interpreted(_GPU_PLATFORMS, run, q, k, v, ids)


def _mha_grads(q, k, v, ids, out, lse, d_out, causal: bool) -> tuple[Array, Array, Array]:
    """The kernel's own backward (`_mha_backward`) against the given `out` / natural `lse` -> (dq, dk, dv)."""
    from jax.experimental.pallas.ops.gpu import attention as gpu_kernel

    def run(interpret, q, k, v, ids, out, lse, d_out):
        b, h, t, d = q.shape
        residuals = (_mha_rows(q), _mha_rows(k), _mha_rows(v), jnp.repeat(ids, h, axis=0), _mha_rows(out))
        residuals += (lse.reshape(b * h, 1, t) / math.log(2),)
        sizes, impl, warps, stages, grid, debug = gpu_kernel.BlockSizes.get_default(), "triton", None, 2, None, False
        grads = gpu_kernel._mha_backward(
            1.0, causal, sizes, impl, warps, stages, grid, interpret, debug, False, residuals, _mha_rows(d_out)
        )
        return tuple(g.reshape(b, h, t, d) for g in grads[:3])

    return _compiled_or_interpreted(_GPU_PLATFORMS, run, q, k, v, ids, out, lse, d_out)


@dataclasses.dataclass(frozen=True)
class _MhaPass:
    """One pass of the Pallas GPU flash-attention kernel: ids = (one id array [b, t]: equal ids see each
    other), `causal` or not. With `later_in_block` the ids are block ids and the pass gives every block
    token the strictly later tokens of its block, run causal over a reordered row (`_later_in_block_order`)."""

    causal: bool
    later_in_block: bool = False

    def forward(self, q: Array, k: Array, v: Array, ids: tuple[Array]) -> tuple[Array, Array]:
        if not self.later_in_block:
            return _mha_forward(q, k, v, ids[0], self.causal)
        kernel_ids, (q_index, kv_index, q_inverse) = _later_in_block_order(ids[0])
        q, k, v = self._reorder(q, k, v, q_index, kv_index)
        out, lse = _mha_forward(q, k, v, kernel_ids, self.causal)
        return _take_slots(out, q_inverse), _take_slots(lse, q_inverse)

    def backward(self, q, k, v, ids, out, lse, d_out) -> tuple[Array, Array, Array]:
        if not self.later_in_block:
            return _mha_grads(q, k, v, ids[0], out, lse, d_out, self.causal)
        kernel_ids, (q_index, kv_index, _) = _later_in_block_order(ids[0])
        reordered, pullback = jax.vjp(lambda q, k, v: self._reorder(q, k, v, q_index, kv_index), q, k, v)
        per_query = lambda x: _take_slots(x, q_index)
        grads = _mha_grads(*reordered, kernel_ids, per_query(out), per_query(lse), per_query(d_out), self.causal)
        return pullback(grads)

    @staticmethod
    def _reorder(q, k, v, q_index, kv_index):
        empty_key = lambda x: jnp.pad(x, ((0, 0), (0, 0), (0, 1), (0, 0)))
        return _take_slots(q, q_index), _take_slots(empty_key(k), kv_index), _take_slots(empty_key(v), kv_index)


def gpu_attention(query: Array, key: Array, value: Array, segments: SegmentMask) -> Array:
    """`attend_segments` on the Pallas GPU flash-attention kernel (Triton), equal to `make_attention_mask`
    on real tokens; no [q_len, kv_len] array is ever built.

    The kernel takes one id array for queries and keys and a static causal flag. A causal mask with
    bidirectional vision blocks is, as on splash, the union of (1) causal keys of the same segment and
    (2) strictly later keys of the same block, merged by log-sum-exp (`_merged_passes`); pass (2) runs
    causal over the row reordered and reversed (`_later_in_block_order`), so it costs about what (1)
    does. Block ids must be unique within a row (the VLM uses the segment id). Self-attention only;
    lengths are padded to 128. Padding queries see other padding. On a GPU this lowers to the Triton
    kernel, elsewhere to the same kernel in Pallas interpret mode.
    """
    t = query.shape[1]
    q, k, v, seg, block = _kernel_layout(query, key, value, segments)
    if not segments.causal or block is None:
        out = _passes_per_shard((_MhaPass(segments.causal),), q, (k,), (v,), ((seg,),), (None,))
    else:
        passes = (_MhaPass(causal=True), _MhaPass(causal=True, later_in_block=True))
        out = _passes_per_shard(passes, q, (k, k), (v, v), ((seg,), (block,)), (None, _has_later_block_key(block)))
    return out.transpose(0, 2, 1, 3)[:, :t]
