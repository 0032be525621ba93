"""The attention contract: the dense mask, and every kernel path equal to the XLA reference."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from stts_jax.models.attention import SegmentMask, attend, attend_segments, make_attention_mask


def packed_row(rng, lengths, vision_spans, total):
    """segment ids and vision-block ids for one row packing examples of `lengths` then padding."""
    segments = np.zeros(total, np.int32)
    blocks = np.zeros(total, np.int32)
    start = 0
    for example, (length, spans) in enumerate(zip(lengths, vision_spans, strict=True), start=1):
        segments[start : start + length] = example
        for a, b in spans:  # vision tokens of one example can be interleaved with text
            blocks[start + a : start + b] = example
        start += length
    return segments, blocks


def test_dense_mask_matches_the_definition():
    segments, blocks = packed_row(None, [6, 5], [[(1, 3), (4, 5)], [(0, 2)]], 13)
    m = SegmentMask.self_attention(jnp.asarray(segments)[None], jnp.asarray(blocks)[None])
    mask = np.asarray(make_attention_mask(m))[0, 0]
    for q in range(13):
        for k in range(13):
            same = segments[q] == segments[k] and segments[k] != 0
            bidir = blocks[q] > 0 and blocks[q] == blocks[k]
            assert mask[q, k] == (same and (k <= q or bidir)), (q, k)


def _qkv(rng, t, heads=4, kv=2, d=16):
    q = jnp.asarray(rng.normal(size=(2, t, heads, d)), jnp.float32)
    k = jnp.asarray(rng.normal(size=(2, t, kv, d)), jnp.float32)
    v = jnp.asarray(rng.normal(size=(2, t, kv, d)), jnp.float32)
    return q, k, v


def _value_and_grads(attention, q, k, v, real):
    """Output and d(sum(out * cotangent))/d(q, k, v), the cotangent zero on padding queries."""
    cotangent = jnp.asarray(np.random.default_rng(9).normal(size=q.shape), jnp.float32) * real[:, :, None, None]
    loss = lambda q, k, v: (attention(q, k, v) * cotangent).sum()
    return attention(q, k, v), jax.grad(loss, argnums=(0, 1, 2))(q, k, v)


def _assert_same(got, reference, real):
    (out, grads), (ref_out, ref_grads) = got, reference
    np.testing.assert_allclose(np.asarray(out)[real], np.asarray(ref_out)[real], atol=1e-5)
    for name, g, ref in zip("qkv", grads, ref_grads, strict=True):
        np.testing.assert_allclose(np.asarray(g), np.asarray(ref), atol=1e-5, err_msg=f"d{name}")


@pytest.mark.parametrize("rows", ["llm", "causal", "vit"])
@pytest.mark.parametrize("impl", ["splash", "gpu"])
def test_kernels_equal_xla_on_packed_rows(impl, rows):
    """Forward and gradient, splash (TPU) and Pallas GPU kernels in interpret mode: packed LLM rows (causal
    text around bidirectional vision blocks, interleaved; the two passes merged under the custom VJP),
    causal rows without blocks, and bidirectional ViT rows."""
    rng = np.random.default_rng(0)
    t = 256
    packed = [
        packed_row(rng, [100, 90, 40], [[(5, 60), (70, 80)], [(10, 50)], []], t),
        packed_row(rng, [256], [[(0, 3), (250, 256)]], t),
    ]
    segments = jnp.asarray(np.stack([r[0] for r in packed]))
    blocks = jnp.asarray(np.stack([r[1] for r in packed])) if rows == "llm" else None
    m = SegmentMask.self_attention(segments, blocks, causal=rows != "vit")
    q, k, v = _qkv(rng, t)
    real = np.asarray(segments) != 0
    reference = _value_and_grads(lambda q, k, v: attend_segments(q, k, v, m, impl="xla"), q, k, v, real)
    kernel = jax.jit(
        lambda q, k, v: _value_and_grads(lambda q, k, v: attend_segments(q, k, v, m, impl=impl), q, k, v, real)
    )
    assert "pallas_call" in str(kernel.trace(q, k, v).jaxpr)
    _assert_same(kernel(q, k, v), reference, real)


@pytest.mark.parametrize("impl", ["splash", "gpu"])
def test_left_out_query_cannot_overflow_the_merged_backward(impl):
    """A text query is left out of the second (later-in-block) pass, yet the kernel still pairs it with one
    stray key there: the next text token. With a logit 100 above everything the query may see, exp(S -
    lse) overflows float32; the merged backward must still give finite gradients equal to XLA's."""
    rng = np.random.default_rng(6)
    segments, blocks = packed_row(rng, [128], [[(10, 40)]], 128)
    m = SegmentMask.self_attention(jnp.asarray(segments)[None], jnp.asarray(blocks)[None])
    q, k, v = (x[:1] * 0.1 for x in _qkv(rng, 128))
    direction = jnp.zeros(16).at[0].set(20.0)  # q.k * 16**-0.5 = 100 for text query 60 and text key 61
    q, k = q.at[0, 60, :].set(direction), k.at[0, 61, :].set(direction)
    real = np.ones((1, 128), bool)
    reference = _value_and_grads(lambda q, k, v: attend_segments(q, k, v, m, impl="xla"), q, k, v, real)
    got = jax.jit(
        lambda q, k, v: _value_and_grads(lambda q, k, v: attend_segments(q, k, v, m, impl=impl), q, k, v, real)
    )(q, k, v)
    assert all(np.isfinite(np.asarray(g)).all() for g in got[1])
    _assert_same(got, reference, real)


def test_jax_dot_product_attention_equals_xla_with_bias_and_mask():
    rng = np.random.default_rng(1)
    q, k, v = _qkv(rng, 24)
    mask = jnp.asarray(rng.random((2, 1, 24, 24)) < 0.7) | jnp.eye(24, dtype=bool)
    bias = jnp.asarray(np.log(rng.uniform(np.exp(-2), 1, size=(2, 1, 1, 24))), jnp.float32)
    reference = attend(q, k, v, mask=mask, bias=bias, impl="xla")
    np.testing.assert_allclose(attend(q, k, v, mask=mask, bias=bias, impl="jax"), reference, atol=1e-5)


@pytest.mark.parametrize("impl", ["xla", "splash", "gpu"])
def test_packed_frame_attention_equals_dense_segment_mask(impl):
    """Packed ViT rows: frames of <= 49 real slots, each starting at a multiple of the 7-slot granule
    (padded between frames), laid across 128-slot kernel blocks; the per-frame-window (XLA), frame-block
    (splash) and per-frame-window lengths (gpu: cuDNN's arguments, no mask) paths equal full attention
    under the dense same-frame mask, forward and gradient."""
    from stts_jax.models.attention import attend_packed_frames

    rng = np.random.default_rng(2)
    slots, frame_len, granule = 392, 49, 7
    segments = np.zeros((2, slots), np.int32)
    for row in range(2):
        start, frame = 0, 1
        while True:
            size = int(rng.integers(1, frame_len + 1))
            if start + size > slots - 20:
                break
            segments[row, start : start + size] = frame
            start, frame = start + -(-size // granule) * granule, frame + 1
    segments = jnp.asarray(segments)
    q, k, v = _qkv(rng, slots)
    real = np.asarray(segments) != 0
    dense_mask = make_attention_mask(SegmentMask.self_attention(segments, causal=False))
    reference = _value_and_grads(lambda q, k, v: attend(q, k, v, mask=dense_mask, impl="xla"), q, k, v, real)
    packed = lambda q, k, v: attend_packed_frames(q, k, v, segments, frame_len, granule, impl)
    _assert_same(jax.jit(lambda q, k, v: _value_and_grads(packed, q, k, v, real))(q, k, v), reference, real)


@pytest.mark.parametrize("biased", [False, True], ids=["plain", "key_bias"])
def test_gpu_dense_frames_equal_xla(biased):
    """The unpacked ViT's frames on the gpu path (`fused_attention`: cuDNN's arguments, its XLA fallback
    here), plain and with the STTS per-key score bias carried as an extra head-dim column: forward and
    gradients, the bias's included. Odd lengths (49 patches) and a head_dim of 8 (9 with the column,
    padded to 16) as in the tiny ViT."""
    rng = np.random.default_rng(5)
    q, k, v = _qkv(rng, 49, heads=4, kv=4, d=8)
    bias = jnp.asarray(np.log(rng.uniform(0.1, 1, size=(2, 1, 1, 49))), jnp.float32) if biased else None
    cotangent = jnp.asarray(rng.normal(size=q.shape), jnp.float32)

    def value_and_grads(impl):
        attention = lambda q, k, v, bias: attend(q, k, v, bias=bias, impl=impl)
        loss = lambda *args: (attention(*args) * cotangent).sum()
        return attention(q, k, v, bias), jax.grad(loss, argnums=(0, 1, 2, 3) if biased else (0, 1, 2))(q, k, v, bias)

    (out, grads), (ref_out, ref_grads) = jax.jit(value_and_grads, static_argnums=0)("gpu"), value_and_grads("xla")
    np.testing.assert_allclose(out, ref_out, atol=1e-5)
    for name, g, ref in zip(["q", "k", "v", "bias"], grads, ref_grads, strict=False):
        assert np.abs(np.asarray(ref)).max() > 1e-3, f"d{name} is trivially zero"
        np.testing.assert_allclose(g, ref, atol=1e-5, err_msg=f"d{name}")


def test_later_in_block_order_makes_strictly_later_block_keys_causal():
    """The reordering behind the gpu path's second LLM pass, checked against its definition: after it a
    query at (reordered) slot a sees key slot c iff c <= a and their kernel ids match, and that is exactly
    the strictly later tokens of the query's vision block, for queries that have one; the key slots hold
    every token but the first of the sorted order once, and slot 0 the empty key."""
    from stts_jax.models.attention import _has_later_block_key, _later_in_block_order

    _, blocks = packed_row(None, [9, 12, 7], [[(1, 3), (4, 6), (8, 9)], [(0, 5), (7, 11)], []], 32)
    kernel_ids, order = _later_in_block_order(jnp.asarray(blocks)[None])
    ids = np.asarray(kernel_ids)[0]
    q_index, kv_index, q_inverse = (np.asarray(x)[0] for x in order)
    has_later = np.asarray(_has_later_block_key(jnp.asarray(blocks)[None]))[0]
    np.testing.assert_array_equal(q_index[q_inverse], np.arange(32))
    assert kv_index[0] == 32 and sorted(kv_index[1:]) == sorted(set(range(32)) - {q_index[-1]})
    for a in range(32):
        i = q_index[a]
        seen = {int(kv_index[c]) for c in range(a + 1) if ids[c] == ids[a]}
        later = {j for j in range(i + 1, 32) if blocks[i] > 0 and blocks[j] == blocks[i]}
        assert has_later[i] == bool(later), i
        if later:
            assert seen == later, (i, seen, later)


def test_gpu_forward_equals_xla_on_pruned_rows():
    """The tiny STTS model at k = 0.5, two videos per row, on the gpu path (here: the Pallas GPU kernels in
    interpret mode for the LLM, `jax.nn.dot_product_attention`'s XLA path with cuDNN's arguments for the
    dense, biased and packed ViT blocks) gives the xla path's keep mask and logits."""
    from test_stts_reference import NO_DUP, RNG, make_batch, stts_config, summary

    from stts_jax.vlm.model import Molmo2

    cfg = stts_config(0.5)
    batch = make_batch(cfg, [[2, 2], [1, 3]], [[3, 3], [4, 4]], NO_DUP, 4)
    params = jax.jit(Molmo2(cfg).init)({"params": jax.random.key(0), **RNG}, batch)["params"]
    results = {}
    for impl in ("xla", "gpu"):
        forward = jax.jit(
            lambda p, b, impl=impl: Molmo2(cfg.replace(attention_impl=impl)).apply({"params": p}, b, rngs=RNG)
        )
        traced = forward.trace(params, batch)
        assert ("pallas_call" in str(traced.jaxpr)) == (impl == "gpu")
        logits, out = traced.lower().compile()(params, batch)
        results[impl] = np.asarray(logits), summary(out)
    (logits, out), (gpu_logits, gpu_out) = results["xla"], results["gpu"]
    np.testing.assert_array_equal(np.asarray(gpu_out["keep"]), np.asarray(out["keep"]))
    real = np.asarray(out["segment_ids"]) != 0
    assert real.sum() > 60 and not np.asarray(out["llm_overflow"]).any()
    np.testing.assert_allclose(gpu_logits[real], logits[real], atol=2e-5, rtol=1e-5)


@pytest.mark.slow  # ~40 s: compiles the training gradient twice, the gpu one through the Pallas interpreter
def test_gpu_equals_xla_in_every_gradient():
    """The tiny STTS model's training loss at k = 0.5, three videos per row: the gpu path's gradient of
    every parameter equals the xla path's (the LLM's two Pallas passes under the merged custom VJP, the
    score bias's column, the packed frames' lengths)."""
    from test_stts_reference import LLM_LEN, NO_DUP, RNG, loss_and_grads, make_batch, stts_config
    from test_train_step import answer_targets

    from stts_jax.vlm.model import Molmo2, RowLayout

    cfg = stts_config(0.5)
    batch = make_batch(cfg, [[1, 2, 1], [2, 1, 1]], [[3, 3, 3], [4, 4, 4]], NO_DUP, 5, layout=RowLayout(LLM_LEN, 3))
    params = jax.jit(Molmo2(cfg).init)({"params": jax.random.key(0), **RNG}, batch)["params"]
    targets = answer_targets(batch, 2)
    (loss, _), grads = loss_and_grads(cfg, params, batch, targets)[0]
    (gpu_loss, _), gpu_grads = loss_and_grads(cfg.replace(attention_impl="gpu"), params, batch, targets)[0]
    np.testing.assert_allclose(float(gpu_loss), float(loss), rtol=1e-5)
    leaves = [(jax.tree_util.keystr(p), np.asarray(g)) for p, g in jax.tree_util.tree_flatten_with_path(grads)[0]]
    scale = max(np.abs(g).max() for _, g in leaves)
    for (path, g), got in zip(leaves, map(np.asarray, jax.tree.leaves(gpu_grads)), strict=True):
        if path.endswith("['k']['bias']"):  # no gradient in exact arithmetic: rounding noise in both
            assert max(np.abs(g).max(), np.abs(got).max()) < 1e-6 * scale, path
            continue
        assert np.abs(g).max() > 0, f"{path} gets no gradient"
        np.testing.assert_allclose(got, g, atol=1e-4 * np.abs(g).max(), rtol=0, err_msg=path)


def test_cudnn_calls_trace_on_the_stts_model(monkeypatch):
    """cuDNN cannot run here, so it is made to look present (a "gpu" backend and a cuDNN version) and the
    programs are only traced, never lowered: where the "jax" and "gpu" paths hand work to cuDNN, they do so
    with arguments its trace-time checks and batching rules accept. Regressions: on "jax", a mask broadcast
    over heads under vmap failed with "cannot reshape array of shape (3, 1, 1, 1, 1) into shape (3, 4, 1,
    1)" (seen on an H100), and any training step on 49-patch frames with "Unsupported sequence length Q 49,
    KV 49" (jax 0.10's cuDNN training rule takes every call as biased, and biased calls need even lengths)."""
    import jax._src.cudnn.fused_attention_stablehlo as cudnn
    from test_stts_reference import NO_DUP, RNG, make_batch, stts_config
    from test_train_step import answer_targets

    from stts_jax.train.loss import training_loss
    from stts_jax.vlm.model import Molmo2

    monkeypatch.setattr(cudnn, "cuda_versions", type("CudnnVersions", (), {"cudnn_get_version": lambda: 90800}))
    monkeypatch.setattr(jax, "default_backend", lambda: "gpu")

    q = jnp.zeros((3, 1, 2, 4, 16), jnp.bfloat16)  # vmapped over 3, [batch, len, heads, head_dim]
    kv = jnp.zeros((3, 1, 2, 2, 16), jnp.bfloat16)
    masks = jnp.ones((3, 1, 1, 2, 2), bool)  # one mask for all heads
    vmapped = jax.vmap(lambda q, kv, mask: attend(q, kv, kv, mask=mask, impl="jax"))
    assert "dot_product_attention_fwd" in str(jax.make_jaxpr(vmapped)(q, kv, masks))
    frames = jnp.zeros((2, 49, 4, 8), jnp.bfloat16)  # the ViT's dense frames, plain and score-biased
    for bias in (None, jnp.zeros((2, 1, 1, 49), jnp.float32)):
        dense = jax.make_jaxpr(lambda x, bias: attend(x, x, x, bias=bias, impl="gpu"))(frames, bias)
        assert "dot_product_attention_fwd" in str(dense)

    cfg = stts_config(0.5).replace(dtype="bfloat16")
    batch = make_batch(cfg, [[2, 2], [1, 3]], [[3, 3], [4, 4]], NO_DUP, 4)
    targets = answer_targets(batch, 2)
    for impl in ("jax", "gpu"):
        model = Molmo2(cfg.replace(attention_impl=impl))
        init = jax.make_jaxpr(model.init)({"params": jax.random.key(0), **RNG}, batch)
        params = jax.eval_shape(model.init, {"params": jax.random.key(0), **RNG}, batch)["params"]

        def loss(p, model=model):
            logits, out = model.apply({"params": p}, batch, rngs=RNG)
            return training_loss(logits, out, batch, targets, cfg.stts.effective_aux_weight)[0]

        grad = str(jax.make_jaxpr(jax.grad(loss))(params))
        assert "dot_product_attention_fwd" in str(init) and "dot_product_attention_bwd" in grad, impl
        assert ("pallas_call" in grad) == (impl == "gpu")


def test_frame_blocks_list_exactly_the_block_pairs_that_share_a_frame():
    """The splash block lists of a packed row (frames of <= 729 slots at 27-slot granules, as at Molmo2
    sizes) visit exactly the (query block, key block) pairs holding a query and a key of one frame, none
    twice, within the static width; at k = 0 (whole frames) that is about 7.7 blocks per query block,
    where the |i - j| < 729 band visits 13."""
    from stts_jax.models.attention import frame_blocks, splash_block_pairs

    rng = np.random.default_rng(4)
    for kept in (lambda: 729, lambda: int(rng.integers(1, 82)) * 9):
        segments, start, frame = np.zeros(128 * 96, np.int32), 0, 1
        while start + 729 <= len(segments):
            size = kept()
            segments[start : start + size] = frame
            start, frame = start + -(-size // 27) * 27, frame + 1
        data_next, block_mask = (np.asarray(x)[0] for x in frame_blocks(jnp.asarray(segments), 729))
        assert data_next.shape[1] == 13
        visited = {(i, int(j)) for i, j in zip(*np.nonzero(block_mask), strict=True)}
        visited = {(i, int(data_next[i, j])) for i, j in visited}
        assert sum(int(m > 0) for m in block_mask.ravel()) == len(visited)  # no pair twice
        blocks = segments.reshape(-1, 128)
        expected = {
            (i, j)
            for i in range(len(blocks))
            for j in range(len(blocks))
            if np.intersect1d(blocks[i][blocks[i] > 0], blocks[j][blocks[j] > 0]).size
        }
        padding_only = {(i, i) for i in range(len(blocks)) if not (blocks[i] > 0).any()}
        assert visited == expected | padding_only
    whole = np.repeat(np.arange(1, 17), 729)
    pairs = int((np.asarray(frame_blocks(jnp.asarray(np.pad(whole, (0, 128 * 92 - len(whole)))), 729)[1]) > 0).sum())
    assert pairs / 92 < 8 < 12 < splash_block_pairs(128 * 92, "full", 729) / 92


def test_score_bias_rescales_per_frame_and_spares_first_frames():
    from stts_jax.models.config import STTSConfig
    from stts_jax.stts.scorer import score_bias
    from stts_jax.windows import patch_windows, pooling_windows

    windows = pooling_windows(7, 7)
    owner = patch_windows(windows, 49)
    rng = np.random.default_rng(3)
    scores = jnp.asarray(rng.uniform(0.2, 0.9, size=(1, 3, 9)), jnp.float32)
    times = jnp.asarray([[0, 1, 0]])  # a 2-frame video, then an image
    real = jnp.asarray([[True, True, True]])
    bias = np.asarray(score_bias(scores, owner, (7, 7), times, real, STTSConfig()))
    assert (bias[0, 0] == 0).all() and (bias[0, 2] == 0).all()
    np.testing.assert_allclose([bias[0, 1].min(), bias[0, 1].max()], [-2.0, 0.0], atol=1e-6)
    # monotone in the score, shared by the patches of a window
    frame = np.asarray(scores)[0, 1][owner]
    assert (np.diff(bias[0, 1][np.argsort(frame)]) >= -1e-7).all()
    rows = np.asarray(score_bias(scores, owner, (7, 7), times, real, STTSConfig(bias_granularity="row")))
    np.testing.assert_allclose(rows[0, 1].reshape(7, 7).min(-1), -2.0, atol=1e-6)  # every patch row spans [-2, 0]
