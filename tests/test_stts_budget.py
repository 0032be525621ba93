"""Budget and selection properties over random scores and frame layouts (property-based)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from stts_jax.stts import budget, packing, pruning

WINDOWS = 9
PATCHES = 20  # windows own 2-3 patches each here; only the partition matters
PATCH_WINDOW = np.repeat(np.arange(WINDOWS), [3, 2, 2, 2, 3, 2, 2, 2, 2])
WINDOW_IDX = np.asarray(
    [np.pad(np.flatnonzero(w == PATCH_WINDOW), (0, 1), constant_values=-1)[:3] for w in range(WINDOWS)]
)


@st.composite
def rows(draw):
    """A batch of rows: per row, videos of random lengths packed into `frames` slots, then padding."""
    frames = draw(st.integers(2, 7))
    batch = draw(st.integers(1, 3))
    max_videos = draw(st.integers(1, 3))
    ids = np.zeros((batch, frames), np.int32)
    for r in range(batch):
        slot = 0
        for video in range(1, draw(st.integers(0, max_videos)) + 1):
            if slot >= frames:
                break
            length = draw(st.integers(1, frames - slot))
            ids[r, slot : slot + length] = video
            slot += length
    ratio = draw(st.sampled_from([0.0, 0.3, 0.5, 0.7, 0.9]))
    seed = draw(st.integers(0, 2**31 - 1))
    return ids, ratio, max_videos, seed


@settings(max_examples=20, deadline=None)  # each example compiles its own shapes (~1.8 s)
@given(rows())
def test_selection_keeps_exactly_the_budget(case):
    ids, ratio, max_videos, seed = case
    batch, frames = ids.shape
    scores = jax.random.uniform(jax.random.key(seed), (batch, frames, WINDOWS))
    if seed % 2:  # ties everywhere
        scores = jnp.round(scores * 2) / 2
    keep = np.asarray(pruning.select_windows(scores, jnp.asarray(ids), budget.prune_table(frames, WINDOWS, ratio)))
    for r in range(batch):
        assert not keep[r][ids[r] == 0].any(), "padding frames are never kept"
        for video in set(ids[r][ids[r] > 0].tolist()):
            slots = np.flatnonzero(ids[r] == video)
            t = len(slots)
            assert keep[r, slots].sum() == WINDOWS * t - budget.pruned_windows(t, WINDOWS, ratio)
            assert keep[r, slots[0]].all(), "frame 0 of every video is intact"
            dropped = ~keep[r, slots[1:]]
            if dropped.any() and (~dropped).any():  # dropped windows score no higher than kept ones
                s = np.asarray(scores)[r, slots[1:]]
                assert s[dropped].max() <= s[~dropped].min()
    # Only runs of equal labels matter: relabelled videos select the same windows.
    relabelled = np.where(ids > 0, 3 * ids + 10, 0)
    same = pruning.select_windows(scores, jnp.asarray(relabelled), budget.prune_table(frames, WINDOWS, ratio))
    np.testing.assert_array_equal(np.asarray(same), keep)
    capacity = budget.kept_capacity(frames, WINDOWS, ratio, max_videos)
    assert keep.reshape(batch, -1).sum(-1).max() <= capacity, "the static kept-window buffer never overflows"

    # Packing loses no kept patch and invents none; every frame starts on a granule, and the static
    # buffer (sized for the worst alignment) holds the row.
    layout = packing.FrameLayout.of(WINDOW_IDX, PATCHES)
    slots = layout.slots(capacity, frames)
    plan = packing.plan_packing(packing.patch_keep_mask(jnp.asarray(keep), PATCH_WINDOW), slots, layout.granule)
    patch_keep = np.asarray(keep)[:, :, PATCH_WINDOW].reshape(batch, -1)
    index, segment = np.asarray(plan.index), np.asarray(plan.segment_ids)
    for r in range(batch):
        real = index[r][segment[r] > 0]
        np.testing.assert_array_equal(real, np.flatnonzero(patch_keep[r]))
        np.testing.assert_array_equal(segment[r][segment[r] > 0], real // PATCHES + 1)
        kept_per_frame = patch_keep[r].reshape(frames, PATCHES).sum(-1)
        aligned = -(-kept_per_frame // layout.granule) * layout.granule
        assert aligned.sum() <= slots
        starts = np.cumsum(aligned) - aligned
        for frame in np.flatnonzero(kept_per_frame):
            np.testing.assert_array_equal(
                np.flatnonzero(segment[r] == frame + 1)[[0, -1]], starts[frame] + [0, kept_per_frame[frame] - 1]
            )
    x = jnp.asarray(np.random.default_rng(seed).normal(size=(batch, frames * PATCHES, 4)), jnp.float32)
    back = np.asarray(packing.unpack(packing.pack(x, plan), plan, frames * PATCHES))
    np.testing.assert_array_equal(back, np.where(patch_keep[..., None], np.asarray(x), 0))


@settings(max_examples=40, deadline=None)
@given(st.integers(1, 64), st.sampled_from([0.1, 0.29, 0.3, 0.5, 0.7, 0.9]), st.integers(1, 4))
def test_capacity_bounds_every_split_and_is_reached(frames, ratio, videos):
    capacity = budget.kept_capacity(frames, 81, ratio, videos)
    # One video filling the row is always a candidate, so the bound is at least its kept count.
    assert capacity >= budget.kept_windows(frames, 81, ratio)
    assert capacity <= 81 * frames
    if videos >= frames:  # single-frame videos keep everything
        assert capacity == 81 * frames


def test_budget_matches_the_paper():
    # STTS.md section 5: floor(81 * k * T) at 64 frames; frame 0 is never pruned.
    assert budget.pruned_windows(64, 81, 0.5) == 2592
    assert budget.pruned_windows(64, 81, 0.3) == 1555
    assert budget.pruned_windows(1, 81, 0.9) == 0  # an image or one-frame video loses nothing
    assert budget.pruned_windows(100, 100, 0.29) == 2900  # exact, where float64 gives 2899.99...
    assert budget.fewer_frames(64, 81, 0.5) == 32
