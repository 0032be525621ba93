"""The pruned model against references built without its packing code.

1. End to end (property-based): the pruned forward equals the unpruned ViT run densely with attention
   masked to the kept patches, pooling exactly the kept windows, and the LLM on a sequence compacted
   on the host; each video keeps its budget of top-scored windows; the forward compiles once per ratio.
2. Overflow flags equal a host count row by row; the train step counts them; the loop stops on them (slow).
3. Splash attention (Pallas interpret mode) equals XLA in logits, and in the gradient of every
   parameter (slow).
4. Splash on an 8-device CPU mesh equals one device (slow; a subprocess: tests/splash_mesh_run.py).
"""

from __future__ import annotations

import collections
import functools
import itertools
import json
import os
import subprocess
import sys
from fractions import Fraction

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st
from test_train_step import answer_targets

from stts_jax.models import get_config
from stts_jax.models.config import STTSConfig
from stts_jax.models.connector import Connector
from stts_jax.models.llm import TokenSequence
from stts_jax.models.vit import VisionTransformer
from stts_jax.train.loss import training_loss
from stts_jax.vlm.model import Molmo2, RowLayout, VideoBatch
from stts_jax.windows import pooling_windows

B, F, SEQ, LLM_LEN = 2, 4, 96, 64  # rows, frame slots per row, input tokens, LLM tokens after pruning
LAYOUT = RowLayout(llm_seq_len=LLM_LEN, max_videos_per_row=2)  # what the batches below are packed as
RATIOS = (0.3, 0.5, 0.75)
RNG = {"stts": jax.random.key(3)}


def stts_config(prune_ratio: float, **changes):
    """tiny (7x7 patches, 9 windows of <= 9 patches) with STTS after block 1: blocks 0-1 dense, block 2
    biased by the log-scores, blocks 3-4 on packed kept patches; the connector reads depths 5 and 3."""
    fields = {"method": "stts", "prune_ratio": prune_ratio, "layer": 1}
    return get_config("tiny", stts=STTSConfig(**(fields | changes)))


def geometry(cfg):
    """(windows [W, window] with -1 padding, owner [N]: the window of every patch), computed here."""
    windows = pooling_windows(*cfg.vision.patch_grid, *cfg.adapter.pooling_size)
    owner = np.full(cfg.vision.num_patches, -1)
    for w, patches in enumerate(windows):
        owner[patches[patches >= 0]] = w
    assert (owner >= 0).all()
    return windows, owner


# -- the budget, from its definition ---------------------------------------------------------------------------


def pruned(t: int, windows: int, k: float) -> int:
    """floor(W k T) in exact arithmetic, never from frame 0: at most W (T - 1)."""
    return min(int(Fraction(str(k)) * windows * t), windows * (t - 1)) if t else 0


def kept(t: int, windows: int, k: float) -> int:
    return windows * t - pruned(t, windows, k)


@functools.cache
def capacity(frames: int, windows: int, k: float, max_videos: int) -> int:
    """Most windows a row of `frames` slots with <= `max_videos` videos keeps: every split, enumerated."""
    return max(
        sum(kept(t, windows, k) for t in lengths)
        for n in range(1, max_videos + 1)
        for lengths in itertools.product(range(1, frames + 1), repeat=n)
        if sum(lengths) <= frames
    )


# -- batches -----------------------------------------------------------------------------------------------------


def make_batch(cfg, rows, suffixes, duplicate, seed, drop=None, layout=LAYOUT):
    """rows[r]: frame counts of the videos packed in row r (one example each: 3 text tokens, per frame a
    timestamp, <frame_start>, one placeholder per window, <frame_end>, then `suffixes[r][i]` text tokens).
    duplicate[r * F + slot]: the slot repeats the previous frame (a static scene: tied scores).
    drop[r]: placeholders of row r turned into text (a truncated prompt)."""
    rng = np.random.default_rng(seed)
    windows, _ = geometry(cfg)
    n, vocab = cfg.vision.num_patches, cfg.text.vocab_size
    ids, segments, positions = (np.zeros((len(rows), SEQ), np.int32) for _ in range(3))
    frame_video_ids = np.zeros((len(rows), F), np.int32)
    pixels = rng.normal(size=(len(rows), F, n, cfg.vision.patch_dim)).astype(np.float32)
    for r, videos in enumerate(rows):
        tokens, slot = [], 0
        for example_id, (length, suffix) in enumerate(zip(videos, suffixes[r], strict=True), start=1):
            example_ids = list(rng.integers(3, vocab, size=3))
            for t in range(length):
                example_ids += [int(rng.integers(3, vocab)), cfg.frame_start_token_id]
                example_ids += [cfg.image_patch_id] * len(windows) + [cfg.frame_end_token_id]
                if t > 0 and duplicate[r * F + slot + t]:
                    pixels[r, slot + t] = pixels[r, slot + t - 1]
            example_ids += list(rng.integers(3, vocab, size=suffix))
            positions[r, len(tokens) : len(tokens) + len(example_ids)] = np.arange(len(example_ids))
            segments[r, len(tokens) : len(tokens) + len(example_ids)] = example_id
            tokens += example_ids
            frame_video_ids[r, slot : slot + length] = example_id
            slot += length
        assert len(tokens) <= SEQ and slot <= F
        ids[r, : len(tokens)] = tokens
        if drop is not None and drop[r]:
            where = np.flatnonzero(ids[r] == cfg.image_patch_id)
            ids[r, rng.choice(where, size=min(drop[r], len(where)), replace=False)] = 7
    pooling = np.concatenate([np.where(windows >= 0, windows + f * n, -1) for f in range(F)])
    return VideoBatch(
        input_ids=jnp.asarray(ids),
        segment_ids=jnp.asarray(segments),
        positions=jnp.asarray(positions),
        pixel_values=jnp.asarray(pixels),
        pooling_idx=jnp.broadcast_to(jnp.asarray(pooling), (len(rows), *pooling.shape)),
        frame_video_ids=jnp.asarray(frame_video_ids),
        layout=layout,
    )


def videos_of(frame_video_ids_row):
    """[(first slot, frame count)] of the videos of one row (runs of equal positive labels)."""
    out, slot = [], 0
    row = list(frame_video_ids_row)
    while slot < len(row):
        if row[slot] > 0:
            end = slot
            while end < len(row) and row[end] == row[slot]:
                end += 1
            out.append((slot, end - slot))
            slot = end
        else:
            slot += 1
    return out


@st.composite
def cases(draw, max_videos=2, long_text=False, corrupt=False):
    """(k, rows, suffixes, duplicate, seed, drop) with every array shape fixed: B rows of F slots, SEQ tokens."""
    k = draw(st.sampled_from(RATIOS))
    rows, suffixes = [], []
    for _ in range(B):
        lengths, used = [], 0
        for _ in range(draw(st.integers(0, max_videos))):
            if used < F:
                lengths.append(draw(st.integers(1, F - used)))
                used += lengths[-1]
        room = (SEQ - 12 * used - 3 * len(lengths)) // max(len(lengths), 1) if long_text else 6
        rows.append(lengths)
        suffixes.append([draw(st.integers(1, room)) for _ in lengths])
    duplicate = draw(st.lists(st.booleans(), min_size=B * F, max_size=B * F))
    drop = [draw(st.integers(0, 3)) for _ in range(B)] if corrupt else None
    return k, rows, suffixes, duplicate, draw(st.integers(0, 2**16)), drop


def summary(forward) -> dict:
    """What the tests read of the pruned forward's record (`Forward`), by name."""
    return {
        "keep": forward.pruned.keep,
        "scores": forward.out["stts/scores"],
        "vit_overflow": forward.pruned.vit_overflow,
        "llm_overflow": forward.compacted.llm_overflow,
        "placeholder_mismatch": forward.compacted.placeholder_mismatch,
        "input_ids": forward.tokens.input_ids,
        "segment_ids": forward.tokens.segment_ids,
        "positions": forward.tokens.positions,
    }


# -- the model, compiled once per ratio --------------------------------------------------------------------------


@pytest.fixture(scope="module")
def params():
    cfg = stts_config(0.5)
    batch = make_batch(cfg, [[3, 1], [2]], [[2, 2], [2]], [False] * B * F, 0)
    return jax.jit(Molmo2(cfg).init)({"params": jax.random.key(0), **RNG}, batch)["params"]


TRACES: collections.Counter = collections.Counter()  # traces of the pruned forward, per ratio


@functools.cache
def pruned_forward(k: float):
    """The jitted pruned forward at ratio k; a second trace (a recompile for new content) fails the test."""
    cfg = stts_config(k)

    @jax.jit
    def forward(params, batch):
        TRACES[k] += 1
        assert TRACES[k] == 1, f"the pruned forward at k={k} was traced {TRACES[k]} times"
        logits, out = Molmo2(cfg).apply({"params": params}, batch, rngs=RNG)
        return logits, summary(out)

    return cfg, forward


# -- the dense reference -----------------------------------------------------------------------------------------


def host_bias(cfg, scores, frame_video_ids):
    """log of the scores min-max rescaled per frame to [bias_min, 1], per patch; 0 on a video's first
    frame and on padding slots (STTS.md section 4)."""
    _, owner = geometry(cfg)
    bias = np.zeros((*scores.shape[:2], len(owner)), np.float32)
    lo_bound = cfg.stts.bias_min
    for r in range(scores.shape[0]):
        for start, length in videos_of(frame_video_ids[r]):
            for slot in range(start + 1, start + length):
                s = scores[r, slot].astype(np.float64)
                unit = (s - s.min()) / (s.max() - s.min()) if s.max() > s.min() else np.ones_like(s)
                bias[r, slot] = np.log(lo_bound + (1 - lo_bound) * unit)[owner]
    return bias


def host_sequence(cfg, batch, keep, length):
    """The LLM sequence with pruned placeholders removed on the host, positions renumbered per example."""
    ids, segs = np.asarray(batch.input_ids), np.asarray(batch.segment_ids)
    flat = keep.reshape(len(ids), -1)
    out = {name: np.zeros((len(ids), length), np.int32) for name in ("input_ids", "segment_ids", "positions")}
    for r in range(len(ids)):
        survivors, rank, count = [], 0, {}
        for token, seg in zip(ids[r], segs[r], strict=True):
            if seg == 0:
                continue
            if token == cfg.image_patch_id:
                rank += 1
                if not flat[r, rank - 1]:
                    continue
            survivors.append((token, seg, count.get(seg, 0)))
            count[seg] = count.get(seg, 0) + 1
        assert len(survivors) <= length
        for i, (token, seg, position) in enumerate(survivors):
            out["input_ids"][r, i], out["segment_ids"][r, i], out["positions"][r, i] = token, seg, position
    return out


def kept_pooling(cfg, keep):
    """Per row, the kept windows in frame-major order as indices into all B * F frames' patches flattened,
    padded with empty windows to F * W: [B, F * W, window]."""
    windows, _ = geometry(cfg)
    n = cfg.vision.num_patches
    out = np.full((keep.shape[0], keep.shape[1] * len(windows), windows.shape[1]), -1, np.int32)
    for r in range(keep.shape[0]):
        frames, ws = np.nonzero(keep[r])
        for i, (f, w) in enumerate(zip(frames, ws, strict=True)):
            out[r, i] = np.where(windows[w] >= 0, (r * keep.shape[1] + f) * n + windows[w], -1)
    return out


@functools.cache
def dense_reference(cfg):
    """Unpruned ViT on every patch: blocks 0..l dense, block l+1 with the score bias, later blocks with
    keys masked to the kept patches of the same frame; the connector on exactly the kept windows; the
    LLM on the host-compacted sequence. All shapes fixed, so it compiles once."""
    vit, layer, depth = VisionTransformer(cfg), cfg.stts.layer, cfg.vit_depth
    depths = set(cfg.vit_feature_depths)

    @jax.jit
    def run(params, pixels, bias, patch_keep, pooling, tokens):
        b, f, n, p = pixels.shape
        apply = functools.partial(vit.apply, {"params": params["vit"]}, method=VisionTransformer.run)
        x = vit.apply({"params": params["vit"]}, pixels.reshape(b * f, n, p), method=VisionTransformer.embed)
        x, hidden = apply(x, 0, layer + 1, {d for d in depths if d <= layer + 1})
        x, biased = apply(x, layer + 1, layer + 2, {layer + 2} & depths, bias=bias.reshape(b * f, 1, 1, n))
        x, masked = apply(
            x, layer + 2, depth, {d for d in depths if d > layer + 2}, mask=patch_keep.reshape(b * f, 1, 1, n)
        )
        hidden = hidden | biased | masked
        features = jnp.concatenate([hidden[d] for d in cfg.vit_feature_depths], axis=-1)
        video, _ = Connector(cfg).apply(
            {"params": params["connector"]}, features, pooling.reshape(-1, pooling.shape[-1])
        )
        video = video.reshape(b, -1, video.shape[-1])
        logits, _, _ = Molmo2(cfg).apply({"params": params}, TokenSequence(**tokens), video, method=Molmo2.llm)
        return logits

    return run


def check_selection(cfg, batch, keep, scores):
    """Each video keeps exactly its budget, frame 0 whole, padding slots empty, and the kept windows of
    frames 1.. are its top-scored ones (host sort; equal scores at the boundary may go either way)."""
    k, (windows, _) = cfg.stts.prune_ratio, geometry(cfg)
    w = len(windows)
    fv = np.asarray(batch.frame_video_ids)
    for r in range(keep.shape[0]):
        assert not keep[r][fv[r] == 0].any(), f"row {r}: a padding slot kept windows"
        for start, t in videos_of(fv[r]):
            video_keep = keep[r, start : start + t]
            assert video_keep.sum() == kept(t, w, k), f"row {r}: a {t}-frame video kept {video_keep.sum()}"
            assert video_keep[0].all(), f"row {r}: frame 0 of a video lost windows"
            later, later_scores = video_keep[1:].ravel(), scores[r, start + 1 : start + t].ravel()
            top = np.sort(later_scores)[::-1][: later.sum()]
            np.testing.assert_array_equal(np.sort(later_scores[later])[::-1], top, err_msg=f"row {r}")


@settings(max_examples=12, deadline=None)
@given(cases())
@example((0.5, [[3, 1], [4]], [[6, 6], [6]], [False] * B * F, 1, None))
@example((0.75, [[2, 2], [1]], [[1, 1], [6]], [False, True, False, True, False, False, False, False], 2, None))
@example((0.3, [[4], [2, 2]], [[6], [6, 6]], [False, True, True, True] + [False] * 4, 3, None))
def test_pruned_model_equals_dense_reference(params, case):
    k, rows, suffixes, duplicate, seed, _ = case
    cfg, forward = pruned_forward(k)
    batch = make_batch(cfg, rows, suffixes, duplicate, seed)
    logits, out = forward(params, batch)
    assert TRACES[k] == 1
    keep, scores = np.asarray(out["keep"]), np.asarray(out["scores"])
    check_selection(cfg, batch, keep, scores)
    for flag in ("vit_overflow", "llm_overflow", "placeholder_mismatch"):
        assert not np.asarray(out[flag]).any(), flag

    tokens = host_sequence(cfg, batch, keep, LLM_LEN)
    for name, value in tokens.items():
        np.testing.assert_array_equal(np.asarray(out[name]), value, err_msg=name)
    _, owner = geometry(cfg)
    fv = np.asarray(batch.frame_video_ids)
    reference = dense_reference(cfg)(
        params,
        batch.pixel_values,
        jnp.asarray(host_bias(cfg, scores, fv)),
        jnp.asarray(keep[:, :, owner]),
        jnp.asarray(kept_pooling(cfg, keep)),
        {name: jnp.asarray(v) for name, v in tokens.items()},
    )
    real = tokens["segment_ids"] != 0
    np.testing.assert_allclose(np.asarray(logits)[real], np.asarray(reference)[real], atol=1e-5, rtol=1e-5)


# -- 2. overflow flags ---------------------------------------------------------------------------------------------


def host_flags(cfg, batch, keep) -> dict[str, np.ndarray]:
    """Per row, from the definitions: more kept windows than the largest row of <= max_videos_per_row
    videos keeps; more surviving tokens than LLM_LEN; placeholders != windows x real frames."""
    k, w = cfg.stts.prune_ratio, len(geometry(cfg)[0])
    cap = capacity(F, w, k, batch.layout.max_videos_per_row)
    ids, segs, fv = (np.asarray(x) for x in (batch.input_ids, batch.segment_ids, batch.frame_video_ids))
    flat = keep.reshape(len(ids), -1)
    flags = {"vit_overflow": [], "llm_overflow": [], "placeholder_mismatch": []}
    for r in range(len(ids)):
        videos = videos_of(fv[r])
        flags["vit_overflow"].append(sum(kept(t, w, k) for _, t in videos) > cap)
        placeholder = ids[r] == cfg.image_patch_id
        mismatch = placeholder.sum() != w * (fv[r] > 0).sum()
        flags["placeholder_mismatch"].append(mismatch)
        rank = np.cumsum(placeholder) - 1  # the k-th placeholder stands for the k-th window
        survivors = ((segs[r] != 0) & (~placeholder | flat[r, np.clip(rank, 0, flat.shape[1] - 1)])).sum()
        if not mismatch:  # then the count follows from the budgets alone
            assert survivors == (segs[r] != 0).sum() - sum(pruned(t, w, k) for _, t in videos)
        flags["llm_overflow"].append(survivors > batch.layout.llm_seq_len)
    return {name: np.asarray(v) for name, v in flags.items()}


NO_DUP = [False] * B * F


@settings(max_examples=15, deadline=None)
@given(cases(max_videos=4, long_text=True, corrupt=True))
# k = 0.5: a [3, 1] row keeps exactly the capacity (23), not more; three images keep 27 > 23
@example((0.5, [[3, 1], [1, 1, 1]], [[2, 2], [2, 2, 2]], NO_DUP, 0, [0, 0]))
# k = 0.3: three videos but 27 <= 28 kept windows (no overflow); two long examples overflow the LLM only
@example((0.3, [[1, 1, 1], [2, 2]], [[2, 2, 2], [21, 21]], NO_DUP, 1, [0, 0]))
# exactly LLM_LEN survivors, then one more
@example((0.5, [[4], [4]], [[31], [32]], NO_DUP, 2, [0, 0]))
# four videos in a row; a prompt that lost two placeholders
@example((0.75, [[1, 1, 1, 1], [2, 1]], [[1, 1, 1, 1], [3, 3]], NO_DUP, 3, [0, 2]))
def test_overflow_flags_equal_a_host_count(params, case):
    k, rows, suffixes, duplicate, seed, drop = case
    cfg, forward = pruned_forward(k)
    batch = make_batch(cfg, rows, suffixes, duplicate, seed, drop)
    _, out = forward(params, batch)
    assert TRACES[k] == 1
    keep = np.asarray(out["keep"])
    check_selection(cfg, batch, keep, np.asarray(out["scores"]))  # flagged rows still select by the budget
    for name, expected in host_flags(cfg, batch, keep).items():
        np.testing.assert_array_equal(np.asarray(out[name]), expected, err_msg=f"{name} of rows {rows} at k={k}")


OVERFLOW_BATCHES = [  # (rows, suffixes, placeholders dropped per row): 1, 2 and 0 flagged rows at k = 0.5
    ([[1, 1, 1], [3, 1]], [[2, 2, 2], [2, 2]], [0, 0]),  # ViT buffer: 27 > 23 kept windows; 23 is not an overflow
    ([[4], [2]], [[32], [3]], [0, 2]),  # 65 LLM tokens > 64; a truncated prompt
    ([[4], [2, 2]], [[31], [3, 3]], [0, 0]),  # 64 LLM tokens fit
]


def test_train_step_counts_overflow_rows(params):
    from stts_jax.train.optimizer import OptimizerConfig, make_optimizer
    from stts_jax.train.step import TrainState, train_step

    cfg, forward = pruned_forward(0.5)
    optimizer = make_optimizer(OptimizerConfig(), params)
    copy = jax.tree.map(jnp.copy, params)  # the step donates its state
    state = TrainState(jnp.zeros((), jnp.int32), copy, optimizer.init(copy), jax.random.key_data(jax.random.key(0)))
    counts = []
    for seed, (rows, suffixes, drop) in enumerate(OVERFLOW_BATCHES):
        batch = make_batch(cfg, rows, suffixes, NO_DUP, seed, drop)
        flags = host_flags(cfg, batch, np.asarray(forward(params, batch)[1]["keep"]))
        state, metrics = train_step(cfg, optimizer, state, batch, answer_targets(batch, 2))
        counts.append(int(metrics["overflow_rows"]))
        assert counts[-1] == int(np.any(list(flags.values()), axis=0).sum()), (rows, flags)
    assert counts == [1, 2, 0]


@pytest.mark.slow  # ~35 s: builds the synthetic dataset, compiles a train step (keeps the default run < 90 s)
def test_training_loop_stops_on_a_row_that_lost_placeholders(tmp_path, monkeypatch):
    """The real loop on the real synthetic data, one row of each batch losing two placeholders (a
    truncated prompt): the first step raises the clear error and saves no checkpoint."""
    from conftest import synthetic_config

    from stts_jax.errors import TrainingError
    from stts_jax.train import loop

    real = loop.to_model_batch

    def truncated_prompt(batch, model_cfg, layout):
        video, targets = real(batch, model_cfg, layout)
        ids = np.asarray(video.input_ids).copy()
        ids[0, np.flatnonzero(ids[0] == model_cfg.image_patch_id)[:2]] = 7
        return video.replace(input_ids=jnp.asarray(ids)), targets

    monkeypatch.setattr(loop, "to_model_batch", truncated_prompt)
    workdir = tmp_path / "run"
    with pytest.raises(TrainingError, match=r"step 0: 1 row\(s\) overflowed a static STTS buffer or lost placeholders"):
        loop.train(synthetic_config(str(tmp_path / "data"), 2, 1), str(workdir), progress=False)
    assert not list(workdir.glob("checkpoints/[0-9]*")), "a step that overflowed must not be checkpointed"


# -- 3. splash attention == XLA ------------------------------------------------------------------------------------


def loss_and_grads(cfg, params, batch, targets):
    """d(training loss)/d(every parameter), with the logits and the selection, compiled once; and the
    jaxpr's text (to see which kernels ran)."""

    def loss_fn(p):
        logits, out = Molmo2(cfg).apply({"params": p}, batch, rngs=RNG)
        loss, _ = training_loss(logits, out, batch, targets, cfg.stts.effective_aux_weight)
        return loss, (logits, summary(out))

    traced = jax.jit(jax.value_and_grad(loss_fn, has_aux=True)).trace(params)
    return traced.lower().compile()(params), str(traced.jaxpr)


def test_splash_forward_equals_xla_on_pruned_rows(params):
    """Two videos per row at k = 0.5: splash runs the dense ViT blocks, the packed blocks (banded, with
    segment ids) and the LLM (two passes merged); the pooling and the block with the score bias stay on XLA."""
    cfg, forward = pruned_forward(0.5)
    batch = make_batch(cfg, [[2, 2], [1, 3]], [[3, 3], [4, 4]], NO_DUP, 4)
    logits, out = forward(params, batch)
    splash = jax.jit(lambda p, b: Molmo2(cfg.replace(attention_impl="splash")).apply({"params": p}, b, rngs=RNG))
    traced = splash.trace(params, batch)
    assert "pallas_call" in str(traced.jaxpr)
    s_logits, s_out = traced.lower().compile()(params, batch)
    s_out = summary(s_out)
    np.testing.assert_array_equal(np.asarray(s_out["keep"]), np.asarray(out["keep"]))
    real = np.asarray(out["segment_ids"]) != 0
    assert real.sum() > 60 and not np.asarray(out["llm_overflow"]).any()
    np.testing.assert_allclose(np.asarray(s_logits)[real], np.asarray(logits)[real], atol=2e-5, rtol=1e-5)


@pytest.mark.slow  # ~45 s: compiles the gradient twice, the splash one through the Pallas interpreter
def test_splash_equals_xla_in_logits_and_every_gradient(params):
    """Three videos per row at k = 0.5, the training loss (answer cross-entropy + aux loss); splash's
    backward is the kernel's own, merged over the LLM's two passes by a custom VJP."""
    cfg = stts_config(0.5)
    layout = RowLayout(LLM_LEN, max_videos_per_row=3)
    batch = make_batch(cfg, [[1, 2, 1], [2, 1, 1]], [[3, 3, 3], [4, 4, 4]], NO_DUP, 5, layout=layout)
    targets = answer_targets(batch, 2)
    results = {}
    for impl in ("xla", "splash"):
        results[impl], jaxpr = loss_and_grads(cfg.replace(attention_impl=impl), params, batch, targets)
        assert ("pallas_call" in jaxpr) == (impl == "splash")
    (loss, (logits, out)), grads = results["xla"]
    (s_loss, (s_logits, s_out)), s_grads = results["splash"]
    for flag in ("vit_overflow", "llm_overflow", "placeholder_mismatch"):
        assert not np.asarray(out[flag]).any(), flag
    np.testing.assert_array_equal(np.asarray(s_out["keep"]), np.asarray(out["keep"]))
    real = np.asarray(out["segment_ids"]) != 0
    np.testing.assert_allclose(np.asarray(s_logits)[real], np.asarray(logits)[real], atol=2e-5, rtol=1e-5)
    np.testing.assert_allclose(float(s_loss), float(loss), rtol=1e-5)
    # Every leaf against its own scale. Key biases get no gradient in exact arithmetic (softmax ignores a
    # constant added to all of a query's logits): theirs must be rounding noise in both.
    leaves = [(jax.tree_util.keystr(p), np.asarray(g)) for p, g in jax.tree_util.tree_flatten_with_path(grads)[0]]
    scale = max(np.abs(g).max() for _, g in leaves)
    for (path, g), s in zip(leaves, map(np.asarray, jax.tree.leaves(s_grads)), strict=True):
        if path.endswith("['k']['bias']"):
            assert max(np.abs(g).max(), np.abs(s).max()) < 1e-6 * scale, path
            continue
        assert np.abs(g).max() > 0, f"{path} gets no gradient"
        np.testing.assert_allclose(s, g, atol=1e-4 * np.abs(g).max(), rtol=0, err_msg=path)


# -- 4. splash on an 8-device mesh == one device -------------------------------------------------------------------


@pytest.mark.slow  # ~75 s: compiles a splash train step for 8 fake devices and for one
def test_splash_train_step_on_an_8_device_mesh_equals_one_device():
    """tests/splash_mesh_run.py: one SGD step (the update is the gradient) of the tiny STTS model with
    splash attention through `sharded_train_step` on a (2, 2, 2) mesh (rows over data x fsdp, heads over
    tensor, the kernel inside a shard_map) against the same step on one device."""
    script = os.path.join(os.path.dirname(os.path.abspath(__file__)), "splash_mesh_run.py")
    run = subprocess.run([sys.executable, script], capture_output=True, text=True, timeout=900)
    assert run.returncode == 0, run.stderr[-3000:]
    result = json.loads(run.stdout.strip().splitlines()[-1])
    assert result["pallas"] and result["shard_map"], "the mesh program must run the Pallas kernel per shard"
    mesh, single = result["mesh"], result["single"]
    assert mesh["overflow_rows"] == single["overflow_rows"] == 0 and mesh["rejected"] == 0
    assert mesh["answer_tokens"] == single["answer_tokens"] > 0
    for name in ("loss", "aux_loss", "answer_loss", "grad_norm"):
        np.testing.assert_allclose(mesh[name], single[name], rtol=1e-5, err_msg=name)
    assert result["worst_update_error"] < 1e-4, (result["worst_leaf"], result["worst_update_error"])
    assert result["key_bias_update"] < 1e-6, result["key_bias_update"]
