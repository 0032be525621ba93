"""STTS inside the VLM: packed == dense reference, in-graph removal == host-built sequence, k = 0,
gradients, no recompilation, bad configs."""

from __future__ import annotations

import dataclasses

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import packed_and_dense_vit, stts_batch

from stts_jax.errors import ConfigError
from stts_jax.models import get_config
from stts_jax.models.config import STTSConfig
from stts_jax.models.llm import TokenSequence
from stts_jax.vlm.model import Molmo2

ROWS = [[3, 1], [2]]  # row 0 packs a 3-frame video and an image; row 1 has one video and a padding slot
FRAMES, SEQ = 4, 96
RNG = {"stts": jax.random.key(7)}


def stts_config(**changes):
    """tiny with STTS after block 1: blocks 0-1 dense, block 2 biased, blocks 3-4 packed; the adapter
    reads depth 3 (dense side) and depth 5 (packed side)."""
    fields = {"method": "stts", "prune_ratio": 0.5, "layer": 1} | changes
    return get_config("tiny", stts=STTSConfig(**fields))


@pytest.fixture(scope="module")
def setup():
    cfg = stts_config()
    batch = stts_batch(cfg, ROWS, FRAMES, SEQ)
    params = jax.jit(Molmo2(cfg).init)({"params": jax.random.key(0), **RNG}, batch)["params"]
    return cfg, batch, params


def test_packed_blocks_equal_dense_reference_on_kept_tokens(setup):
    cfg, batch, params = setup
    logits, out = jax.jit(lambda p, b: Molmo2(cfg).apply({"params": p}, b, rngs=RNG))(params, batch)
    # 9 windows per frame: row 0 keeps 27 - floor(13.5) of its 3-frame video + all 9 of the image;
    # row 1 keeps 18 - 9 of its 2-frame video.
    np.testing.assert_array_equal(np.asarray(out.out["stts/kept_windows"]), [14 + 9, 9])
    patch_keep, packed, dense = packed_and_dense_vit(cfg, params, out)
    np.testing.assert_allclose(packed[patch_keep], dense[patch_keep], atol=1e-5)
    assert (packed[~patch_keep] == 0).all()


def _host_shortened(cfg, batch, keep, length):
    """The reference: drop pruned placeholders on the host, renumber positions per example."""
    ids, segs = np.asarray(batch.input_ids), np.asarray(batch.segment_ids)
    keep = np.asarray(keep).reshape(len(ids), -1)
    out = {k: np.zeros((len(ids), length), np.int32) for k in ("input_ids", "segment_ids", "positions")}
    for r in range(len(ids)):
        kept, rank, position, previous = [], 0, 0, None
        for token, seg in zip(ids[r], segs[r], strict=True):
            if seg == 0:
                continue
            if token == cfg.image_patch_id:
                rank += 1
                if not keep[r, rank - 1]:
                    continue
            position = 0 if seg != previous else position + 1
            previous = seg
            kept.append((token, seg, position))
        for i, (token, seg, position) in enumerate(kept):
            out["input_ids"][r, i], out["segment_ids"][r, i], out["positions"][r, i] = token, seg, position
    return {k: jnp.asarray(v) for k, v in out.items()}


@pytest.mark.parametrize("policy", ["renumber", "keep"])
def test_in_graph_removal_equals_host_built_sequence(policy):
    cfg = stts_config(position_policy=policy)
    batch = stts_batch(cfg, ROWS, FRAMES, SEQ, seed=1, llm_seq_len=64)
    model = Molmo2(cfg)
    params = jax.jit(model.init)({"params": jax.random.key(0), **RNG}, batch)["params"]
    logits, out = jax.jit(lambda p, b: model.apply({"params": p}, b, rngs=RNG))(params, batch)
    assert logits.shape[1] == 64 and not np.asarray(out.compacted.llm_overflow).any()
    tokens = _host_shortened(cfg, batch, out.pruned.keep, 64)
    if policy == "keep":  # original positions of the surviving tokens, gathered on the host
        keep_mask = np.asarray(out.pruned.keep).reshape(2, -1)
        ids, segs, pos = (np.asarray(x) for x in (batch.input_ids, batch.segment_ids, batch.positions))
        rank = np.cumsum(ids == cfg.image_patch_id, axis=1) - 1
        survive = (segs != 0) & ((ids != cfg.image_patch_id) | np.take_along_axis(keep_mask, np.maximum(rank, 0), 1))
        kept_pos = np.zeros((2, 64), np.int32)
        for r in range(2):
            kept_pos[r, : survive[r].sum()] = pos[r][survive[r]]
        tokens["positions"] = jnp.asarray(kept_pos)
    for name in ("input_ids", "segment_ids", "positions"):
        np.testing.assert_array_equal(np.asarray(getattr(out.tokens, name)), np.asarray(tokens[name]), err_msg=name)
    reference, _, _ = model.apply({"params": params}, TokenSequence(**tokens), out.pruned.tokens, method=Molmo2.llm)
    real = np.asarray(tokens["segment_ids"]) != 0
    np.testing.assert_allclose(np.asarray(logits)[real], np.asarray(reference)[real], atol=1e-5)


def test_overflow_is_reported():
    """Too short an LLM buffer, or more videos per row than the layout says: flagged, never silent."""
    cfg = stts_config()
    batch = stts_batch(cfg, ROWS, FRAMES, SEQ, llm_seq_len=40, videos_per_row=1)
    params = jax.jit(Molmo2(cfg).init)({"params": jax.random.key(0), **RNG}, batch)["params"]
    _, out = jax.jit(lambda p: Molmo2(cfg).apply({"params": p}, batch, rngs=RNG))(params)
    np.testing.assert_array_equal(np.asarray(out.compacted.llm_overflow), [True, False])
    # Row 0 packs two videos (3 frames + an image) while the buffer is sized for one: 23 > 18.
    np.testing.assert_array_equal(np.asarray(out.pruned.vit_overflow), [True, False])
    np.testing.assert_array_equal(np.asarray(out.compacted.placeholder_mismatch), [False, False])
    # A row whose prompt lost placeholders (a truncated prompt) no longer matches its frames.
    ids = np.asarray(batch.input_ids).copy()
    ids[1, np.flatnonzero(ids[1] == cfg.image_patch_id)[:3]] = 7
    _, out = jax.jit(lambda p: Molmo2(cfg).apply({"params": p}, batch.replace(input_ids=jnp.asarray(ids)), rngs=RNG))(
        params
    )
    np.testing.assert_array_equal(np.asarray(out.compacted.placeholder_mismatch), [False, True])


def test_zero_ratio_through_the_pruning_path_reproduces_the_unpruned_model():
    base = get_config("tiny")
    batch = stts_batch(base, ROWS, FRAMES, SEQ, seed=2)
    params = jax.jit(Molmo2(base).init)(jax.random.key(0), batch)["params"]
    plain, _ = jax.jit(Molmo2(base).apply)({"params": params}, batch)
    for method in ("random", "heuristic"):
        cfg = stts_config(method=method, prune_ratio=0.0)
        logits, out = jax.jit(lambda p, b, cfg=cfg: Molmo2(cfg).apply({"params": p}, b, rngs=RNG))(params, batch)
        assert np.asarray(out.pruned.keep)[np.asarray(batch.frame_video_ids) > 0].all()
        real = np.asarray(batch.segment_ids) != 0
        np.testing.assert_allclose(np.asarray(logits)[real], np.asarray(plain)[real], atol=1e-5)


def _scorer_grads(cfg, params, batch, loss_kind):
    def loss(p):
        logits, out = Molmo2(cfg).apply({"params": p}, batch, rngs=RNG)
        task = jnp.mean(jax.nn.log_softmax(logits)[..., 0] * (out.tokens.segment_ids > 0))
        return task if loss_kind == "task" else out.aux_loss

    grads = jax.jit(jax.grad(loss))(params)["scorer"]
    return max(float(jnp.abs(g).max()) for g in jax.tree.leaves(grads))


def test_gradients_reach_the_scorer_through_bias_and_aux_only(setup):
    cfg, batch, params = setup
    assert _scorer_grads(cfg, params, batch, "task") > 0  # through the log-score bias of block l+1
    assert _scorer_grads(cfg, params, batch, "aux") > 0
    # bias_min = 1 makes the bias identically 0: the task loss then has no path to the scorer, so
    # nothing flows through the hard selection.
    assert (
        _scorer_grads(dataclasses.replace(cfg, stts=dataclasses.replace(cfg.stts, bias_min=1.0)), params, batch, "task")
        == 0
    )


def test_no_recompile_across_scores_and_frame_counts(setup):
    cfg, _, params = setup

    @jax.jit
    @chex.assert_max_traces(n=1)
    def forward(params, batch):
        return Molmo2(cfg).apply({"params": params}, batch, rngs=RNG)[0]

    first = forward(params, stts_batch(cfg, ROWS, FRAMES, SEQ, seed=3))
    second = forward(params, stts_batch(cfg, [[2, 2], [4]], FRAMES, SEQ, seed=4))  # other frame counts
    assert first.shape == second.shape


def test_bad_stts_configs_name_the_field():
    with pytest.raises(ConfigError, match="stts.prune_ratio"):
        stts_config(prune_ratio=1.0)
    with pytest.raises(ConfigError, match="stts.layer"):
        stts_config(layer=4)  # tiny runs 5 blocks: block l+1 must exist
    with pytest.raises(ConfigError, match="stts.window_size"):
        stts_config(window_size=(2, 2))
    with pytest.raises(ConfigError, match="stts.method"):
        stts_config(method="merge_everything")


def test_generation_after_pruning_continues_the_compacted_prompt(setup):
    from stts_jax.vlm.generate import greedy_generate

    cfg, batch, params = setup
    batch = batch.replace(layout=dataclasses.replace(batch.layout, llm_seq_len=64))
    logits, out = jax.jit(lambda p, b: Molmo2(cfg).apply({"params": p}, b, rngs=RNG))(params, batch)
    last = np.asarray((out.tokens.segment_ids != 0).sum(-1) - 1)
    expected_first = np.asarray(logits)[np.arange(2), last].argmax(-1)
    tokens = np.asarray(greedy_generate(cfg, params, batch, 4))
    np.testing.assert_array_equal(tokens[:, 0], expected_first)
