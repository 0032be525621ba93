"""Pruning budgets, computed exactly on the host so that every buffer has a static size.

A video of T frames with W windows per frame at ratio k loses floor(W * k * T) windows, all from
frames 1..T-1 (frame 0 is never pruned), so at most W * (T - 1). Floors are taken in exact rational
arithmetic on the ratio as written (0.29 is 29/100), since binary floats can land just below an
integer (in float64, 0.29 * 100 * 100 == 2899.9999999999995).
"""

from __future__ import annotations

import functools
from fractions import Fraction

import numpy as np


def _ratio(prune_ratio: float) -> Fraction:
    return Fraction(str(prune_ratio))  # the decimal the user wrote, exactly


def pruned_windows(frames: int, windows: int, prune_ratio: float) -> int:
    """Windows a video of `frames` frames loses: min(floor(W k T), W (T - 1))."""
    if frames <= 0:
        return 0
    return min(int(windows * frames * _ratio(prune_ratio)), windows * (frames - 1))


def kept_windows(frames: int, windows: int, prune_ratio: float) -> int:
    return windows * frames - pruned_windows(frames, windows, prune_ratio)


def prune_table(max_frames: int, windows: int, prune_ratio: float) -> np.ndarray:
    """[max_frames + 1] int32: windows pruned from a video of T frames, indexed by T (0 for T = 0)."""
    return np.asarray([pruned_windows(t, windows, prune_ratio) for t in range(max_frames + 1)], np.int32)


@functools.lru_cache(maxsize=256)
def kept_capacity(max_frames: int, windows: int, prune_ratio: float, max_videos: int) -> int:
    """The most windows a row of `max_frames` frame slots holding up to `max_videos` videos can keep.

    Exact maximum over every split of the slots into videos (a small dynamic program): short videos
    keep more than their share (a one-frame video keeps all W windows) and every floor can leave one
    window, so the bound is not simply W * F * (1 - k).
    """
    kept = [kept_windows(t, windows, prune_ratio) for t in range(max_frames + 1)]
    best = np.zeros(max_frames + 1, np.int64)  # best[f]: most kept windows with f frames, <= j videos
    for _ in range(max_videos):
        best = np.asarray(
            [max(best[f - t] + kept[t] for t in range(0, f + 1)) for f in range(max_frames + 1)], np.int64
        )
    return int(best.max())


def fewer_frames(frames: int, windows: int, prune_ratio: float) -> int:
    """Frames for the `fewer_frames` baseline: uniformly fewer frames, the same vision-token budget."""
    return max(1, round(kept_windows(frames, windows, prune_ratio) / windows))
