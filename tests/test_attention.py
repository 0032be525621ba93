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
def test_splash_interpret_equals_xla_on_packed_rows(rows):
    """Forward and gradient: packed LLM rows (causal text around bidirectional vision blocks, the
    two-pass kernel with its custom VJP), causal rows without blocks, and bidirectional ViT rows."""
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
    splash = jax.jit(
        lambda q, k, v: _value_and_grads(lambda q, k, v: attend_segments(q, k, v, m, impl="splash"), q, k, v, real)
    )(q, k, v)
    _assert_same(splash, reference, real)


def test_jax_dot_product_attention_equals_xla_with_bias_and_mask():
    rng = np.random.default_rng(1)
    q, k, v = _qkv(rng, 24)
    mask = jnp.asarray(rng.random((2, 1, 24, 24)) < 0.7) | jnp.eye(24, dtype=bool)
    bias = jnp.asarray(np.log(rng.uniform(np.exp(-2), 1, size=(2, 1, 1, 24))), jnp.float32)
    reference = attend(q, k, v, mask=mask, bias=bias, impl="xla")
    np.testing.assert_allclose(attend(q, k, v, mask=mask, bias=bias, impl="jax"), reference, atol=1e-5)


@pytest.mark.parametrize("impl", ["xla", "splash"])
def test_packed_frame_attention_equals_dense_segment_mask(impl):
    """Packed ViT rows: frames of <= 49 real slots, each starting at a multiple of the 7-slot granule
    (padded between frames), laid across 128-slot kernel blocks; the per-frame-window (XLA) and banded
    (splash) paths equal full attention under the dense same-frame mask, forward and gradient."""
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
