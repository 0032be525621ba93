"""`kept_capacity` is the exact maximum of kept windows over every split of a row's frame slots into videos.

The brute force enumerates every split of up to F frame slots into at most `videos` videos (the
compositions of every f <= F into at most `videos` positive parts) and sums `kept_windows` per video.
"""

from __future__ import annotations

import functools
import itertools

import pytest

from stts_jax.stts import budget

RATIOS = (0.0, 0.1, 0.29, 0.3, 0.5, 0.7, 0.9, 0.99)


def compositions(total: int, parts: int):
    """Every tuple of `parts` positive integers summing to `total` (in order: a video's frames are contiguous)."""
    if parts == 0:
        if total == 0:
            yield ()
        return
    for first in range(1, total - parts + 2):
        for rest in compositions(total - first, parts - 1):
            yield (first, *rest)


@functools.cache
def splits(max_frames: int, max_videos: int) -> tuple[tuple[int, ...], ...]:
    """Every way to fill up to `max_frames` slots with 0..max_videos videos (the rest is padding)."""
    out = [()]
    for used in range(1, max_frames + 1):
        for parts in range(1, min(max_videos, used) + 1):
            out.extend(compositions(used, parts))
    return tuple(out)


def brute_force(max_frames: int, windows: int, ratio: float, max_videos: int) -> tuple[int, tuple[int, ...]]:
    """(most kept windows, a split reaching it)."""
    best = max(splits(max_frames, max_videos), key=lambda s: sum(budget.kept_windows(t, windows, ratio) for t in s))
    return sum(budget.kept_windows(t, windows, ratio) for t in best), best


def test_compositions_are_complete():
    assert sorted(compositions(4, 2)) == [(1, 3), (2, 2), (3, 1)]
    # 2^(F-1) compositions of F into any number of parts; every f <= F, plus the empty row
    assert len(splits(5, 5)) == 1 + sum(2 ** (f - 1) for f in range(1, 6))


@pytest.mark.parametrize("windows", [1, 2, 3, 5, 9])
def test_capacity_equals_the_brute_force_maximum(windows):
    for max_frames, ratio, max_videos in itertools.product(range(1, 8), RATIOS, range(1, 5)):
        capacity = budget.kept_capacity(max_frames, windows, ratio, max_videos)
        expected, split = brute_force(max_frames, windows, ratio, max_videos)
        case = f"F={max_frames} W={windows} k={ratio} videos={max_videos}: best split {split} keeps {expected}"
        assert capacity == expected, f"kept_capacity {capacity} != {case}"
        # never exceeded by any split (the static buffer cannot overflow) ...
        for s in splits(max_frames, max_videos):
            assert sum(budget.kept_windows(t, windows, ratio) for t in s) <= capacity, (s, case)


def test_capacity_by_hand():
    # tiny (9 windows), 4 slots, k = 0.5: one video of 4 keeps 36 - 18 = 18; 2 + 2 keeps 9 + 9;
    # 1 + 3 keeps 9 + (27 - 13) = 23, more than W * F * (1 - k) = 18 and less than W * F = 36.
    assert budget.kept_capacity(4, 9, 0.5, 1) == 18
    assert budget.kept_capacity(4, 9, 0.5, 2) == 23
    # 3 videos: 1 + 1 + 2 keeps 9 + 9 + 9 = 27; four one-frame videos keep everything
    assert budget.kept_capacity(4, 9, 0.5, 3) == 27
    assert budget.kept_capacity(4, 9, 0.5, 4) == 36
    # Molmo2 sizes, one 64-frame video at k = 0.5: 5184 - 2592
    assert budget.kept_capacity(64, 81, 0.5, 1) == 2592
    # floors: 3 frames of 81 windows at k = 0.3 lose floor(72.9) = 72; 1 + 2 keeps 81 + (162 - 48)
    assert budget.kept_capacity(3, 81, 0.3, 1) == 243 - 72
    assert budget.kept_capacity(3, 81, 0.3, 2) == 81 + 162 - 48


def test_kept_windows_by_hand():
    # W T - min(floor(W k T), W (T - 1)); exact rationals
    assert [budget.kept_windows(t, 9, 0.7) for t in range(6)] == [0, 9, 18 - 9, 27 - 18, 36 - 25, 45 - 31]
    assert budget.kept_windows(100, 100, 0.29) == 10000 - 2900
    assert budget.kept_windows(2, 9, 0.99) == 9  # frame 0 always survives
