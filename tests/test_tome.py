"""ToMe at STTS's layer and budget: the kept-window count, the merge against a dense numpy bipartite
matching, proportional attention in the packed blocks, k = 0 identity, no recompilation."""

from __future__ import annotations

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import packed_and_dense_vit, stts_batch

from stts_jax.models import get_config
from stts_jax.models.attention import SegmentMask, attend, attend_packed_frames, make_attention_mask
from stts_jax.models.config import STTSConfig
from stts_jax.stts import budget, pruning, tome
from stts_jax.vlm.model import Molmo2
from stts_jax.windows import patch_windows, pooling_windows

ROWS = [[3, 1], [2]]
FRAMES, SEQ = 4, 96
RNG = {"stts": jax.random.key(7)}


def tome_config(**changes):
    """tiny with ToMe after block 2 (blocks 0-2 dense, merged on block 2's output, blocks 3-4 packed)."""
    return get_config("tiny", stts=STTSConfig(**({"method": "tome", "prune_ratio": 0.5, "layer": 1} | changes)))


@pytest.fixture(scope="module")
def params():
    cfg = get_config("tiny")
    return jax.jit(Molmo2(cfg).init)(jax.random.key(0), stts_batch(cfg, ROWS, FRAMES, SEQ))["params"]


def _forward(cfg):
    return jax.jit(lambda p, b: Molmo2(cfg).apply({"params": p}, b, rngs=RNG))


@pytest.mark.parametrize("ratio", [pytest.param(0.3, marks=pytest.mark.slow), 0.5, 0.7])
def test_kept_windows_equal_the_stts_budget(params, ratio):
    cfg = tome_config(prune_ratio=ratio)
    forward = _forward(cfg)
    windows = len(pooling_windows(*cfg.vision.patch_grid))
    for seed, rows in enumerate([ROWS, [[4]], [[2, 2], [1, 3]]]):
        _, out = forward(params, stts_batch(cfg, rows, FRAMES, SEQ, seed=seed))
        expected = [sum(budget.kept_windows(t, windows, ratio) for t in row) for row in rows]
        np.testing.assert_array_equal(np.asarray(out.out["stts/kept_windows"]), expected)
        frame_video_ids = jnp.asarray(stts_batch(cfg, rows, FRAMES, SEQ).frame_video_ids)
        _, times, _ = pruning.frame_layout(frame_video_ids)
        first = np.asarray((times == 0) & (frame_video_ids > 0))
        assert np.asarray(out.pruned.keep)[first].all()  # frame 0 of every video is never merged away
        assert np.isfinite(np.asarray(out.out["stts/scores"])).all()  # the validation histograms read them


def _numpy_tome(x, frame_video_ids, window_idx, ratio):
    """Dense reference: per video, each window of frame t >= 1 matched (cosine of its window mean) to
    every window of frame t - 1; the budget most similar merge; chains followed; each kept patch slot the
    mean of what lands on it. x: [b, f, n, d]. Returns (keep [b, f, w], merged [b, f, n, d], sizes [b, f, n])."""
    b, f, n, d = x.shape
    w = len(window_idx)
    merged, sizes = x.copy(), np.zeros((b, f, n))
    keep = np.zeros((b, f, w), bool)
    for r in range(b):
        ids = frame_video_ids[r]
        for video in sorted(set(ids[ids > 0])):
            frames = np.nonzero(ids == video)[0]
            means = np.stack([[x[r, t, row[row >= 0]].mean(0) for row in window_idx] for t in frames])
            means /= np.linalg.norm(means, axis=-1, keepdims=True)
            edges = []  # (similarity, local frame, window, matched window in the previous frame)
            for i in range(1, len(frames)):
                sim = means[i] @ means[i - 1].T
                edges += [(sim[j].max(), i, j, int(sim[j].argmax())) for j in range(w)]
            edges.sort(key=lambda e: -e[0])
            parent = {(i, j): (i, j) for i in range(len(frames)) for j in range(w)}
            for _, i, j, m in edges[: budget.pruned_windows(len(frames), w, ratio)]:
                parent[(i, j)] = (i - 1, m)
            members = {}
            for node in parent:
                root = node
                while parent[root] != root:
                    root = parent[root]
                members.setdefault(root, []).append(node)
            for (i, j), group in members.items():
                keep[r, frames[i], j] = True
                for slot, patch in enumerate(window_idx[j]):
                    if patch < 0:
                        continue
                    parts = [x[r, frames[gi], window_idx[gj][slot]] for gi, gj in group if window_idx[gj][slot] >= 0]
                    merged[r, frames[i], patch] = np.mean(parts, 0)
                    sizes[r, frames[i], patch] = len(parts)
    return keep, merged, sizes


def test_merge_equals_dense_numpy_bipartite_matching():
    cfg = tome_config()
    rows, cols = cfg.vision.patch_grid
    window_idx = pooling_windows(rows, cols)
    n, w = rows * cols, len(window_idx)
    patch_window = patch_windows(window_idx, n)
    frame_video_ids = np.asarray([[1, 1, 1, 2, 0], [3, 3, 3, 3, 3]], np.int32)
    b, f = frame_video_ids.shape
    x = np.random.default_rng(0).normal(size=(b, f, n, 8)).astype(np.float32)
    x[0, 1] = x[0, 0] + 0.1 * x[0, 1]  # a near-static frame: its windows merge first
    valid = jnp.asarray(window_idx >= 0)
    window_features = jnp.asarray(x)[:, :, np.maximum(window_idx, 0)] * valid[..., None]
    for ratio in (0.3, 0.5, 0.7):
        similarity, match = tome.best_previous_match(window_features, valid, jnp.asarray(frame_video_ids))
        keep = pruning.select_windows(1.0 - similarity, jnp.asarray(frame_video_ids), budget.prune_table(f, w, ratio))
        roots = tome.merge_roots(keep, match)
        merged, sizes = tome.merge_patches(jnp.asarray(x).reshape(b, f * n, -1), roots, window_idx, patch_window)
        ref_keep, ref_merged, ref_sizes = _numpy_tome(x, frame_video_ids, window_idx, ratio)
        np.testing.assert_array_equal(np.asarray(keep), ref_keep)
        patch_keep = ref_keep[:, :, patch_window]
        np.testing.assert_allclose(
            np.asarray(merged).reshape(b, f, n, -1)[patch_keep], ref_merged[patch_keep], atol=1e-5
        )
        real = frame_video_ids > 0  # padding slots are never packed: their sizes are unused
        np.testing.assert_array_equal(np.asarray(sizes).reshape(b, f, n)[real], ref_sizes[real])
        assert ref_sizes.max() > 2  # chains through several frames were exercised


def test_packed_blocks_use_proportional_attention(params):
    cfg = tome_config()
    batch = stts_batch(cfg, ROWS, FRAMES, SEQ, seed=5)
    _, out = _forward(cfg)(params, batch)
    sizes = np.asarray(out.out["tome/sizes"]).reshape(-1, cfg.vision.patch_grid[0] * cfg.vision.patch_grid[1])
    # the dense reference's keys biased by log(size)
    patch_keep, packed, dense = packed_and_dense_vit(cfg, params, out, bias=np.log(np.maximum(sizes, 1.0)))
    assert sizes[patch_keep].max() > 1
    np.testing.assert_allclose(packed[patch_keep], dense[patch_keep], atol=1e-5)


@pytest.mark.parametrize("impl", ["xla", "splash", "gpu"])
def test_packed_frame_attention_takes_a_key_bias(impl):
    """Proportional attention on every packed path (splash runs the XLA chunks when biased; gpu carries
    the bias as cuDNN's extra head-dim column, its XLA fallback here) equals the dense same-frame mask
    with the bias added per key, on the real slots, forward and input gradient."""
    rng = np.random.default_rng(3)
    frame_len, granule = 49, 7
    segments = jnp.asarray(np.repeat([[1] * 21 + [0] * 7 + [2] * 42 + [0] * 14 + [3] * 49 + [0] * 7], 2, 0), jnp.int32)
    q, k, v = (jnp.asarray(rng.normal(size=(2, segments.shape[1], 4, 8)), jnp.float32) for _ in range(3))
    key_bias = jnp.asarray(np.log(rng.integers(1, 5, size=segments.shape)), jnp.float32)
    real = np.asarray(segments) > 0
    mask = make_attention_mask(SegmentMask.self_attention(segments, causal=False))
    dense = lambda q: attend(q, k, v, mask=mask, bias=key_bias[:, None, None, :], impl="xla")
    packed = lambda q: attend_packed_frames(q, k, v, segments, frame_len, granule, impl, key_bias)
    np.testing.assert_allclose(np.asarray(jax.jit(packed)(q))[real], np.asarray(dense(q))[real], atol=1e-5)
    unbiased = attend_packed_frames(q, k, v, segments, frame_len, granule, impl)
    assert np.abs(np.asarray(unbiased)[real] - np.asarray(dense(q))[real]).max() > 1e-3
    weights = jnp.asarray(real[..., None, None], jnp.float32)
    grad = lambda f: jax.grad(lambda q: (f(q) * weights).sum())(q)
    np.testing.assert_allclose(np.asarray(grad(packed))[real], np.asarray(grad(dense))[real], atol=1e-5)


def test_zero_ratio_is_the_unpruned_model(params):
    base = get_config("tiny")
    batch = stts_batch(base, ROWS, FRAMES, SEQ, seed=2)
    plain, _ = jax.jit(Molmo2(base).apply)({"params": params}, batch)
    logits, out = _forward(tome_config(prune_ratio=0.0))(params, batch)
    assert np.asarray(out.pruned.keep)[np.asarray(batch.frame_video_ids) > 0].all()
    real = np.asarray(batch.segment_ids) != 0
    np.testing.assert_allclose(np.asarray(logits)[real], np.asarray(plain)[real], atol=1e-5)


def test_trains_through_the_merge_without_recompiling(params):
    cfg = tome_config()

    @jax.jit
    @chex.assert_max_traces(n=1)
    def grads(params, batch):
        def loss(p):
            logits, out = Molmo2(cfg).apply({"params": p}, batch, rngs=RNG)
            return jnp.mean(jax.nn.log_softmax(logits)[..., 0] * (out.tokens.segment_ids > 0))

        return jax.grad(loss)(params)

    first = grads(params, stts_batch(cfg, ROWS, FRAMES, SEQ, seed=3))
    second = grads(params, stts_batch(cfg, [[2, 2], [4]], FRAMES, SEQ, seed=4))  # other frame counts
    for g in (first, second):
        leaves = jax.tree.leaves(g)
        assert all(np.isfinite(np.asarray(leaf)).all() for leaf in leaves)
        # The blocks before the merge learn through the merged features (the later blocks and the
        # connector read only them at depth l + 2), as when ToMe is trained inside the ViT.
        early = g["vit"]["blocks"]["attn"]["q"]["kernel"][: cfg.stts.layer + 2]
        assert float(jnp.abs(early).max()) > 0
