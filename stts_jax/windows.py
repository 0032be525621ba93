"""Window geometry: which patches of a frame each LLM vision token pools (Molmo2's pooling windows).

A window is the unit STTS scores and prunes; every static size that counts windows reads it here.
"""

from __future__ import annotations

import numpy as np

from stts_jax.models.config import Molmo2Config


def pooling_windows(rows: int, cols: int, pool_h: int = 3, pool_w: int = 3) -> np.ndarray:
    """Windows over a [rows, cols] patch grid: [num_windows, pool_h * pool_w] int32, -1 = padding.

    The grid is padded with -1 to a multiple of the window (half the padding before, the rest
    after, as Molmo2 does), then cut into windows in row-major order; entries are row-major patch
    indices. A 27x27 grid gives 81 full windows; a 7x7 grid gives 9 windows with ragged borders.
    """
    pad_h, pad_w = -rows % pool_h, -cols % pool_w
    grid = np.pad(
        np.arange(rows * cols, dtype=np.int32).reshape(rows, cols),
        ((pad_h // 2, pad_h - pad_h // 2), (pad_w // 2, pad_w - pad_w // 2)),
        constant_values=-1,
    )
    win_rows, win_cols = grid.shape[0] // pool_h, grid.shape[1] // pool_w
    windows = grid.reshape(win_rows, pool_h, win_cols, pool_w).transpose(0, 2, 1, 3)
    return windows.reshape(win_rows * win_cols, pool_h * pool_w)


def video_pooling_indices(num_frames: int, rows: int, cols: int, pool_h: int = 3, pool_w: int = 3) -> np.ndarray:
    """Windows of every frame, indexing the frames' patches flattened: [frames * windows, window]."""
    windows = pooling_windows(rows, cols, pool_h, pool_w)
    offsets = (np.arange(num_frames, dtype=np.int32) * rows * cols)[:, None, None]
    return np.where(windows >= 0, windows[None] + offsets, -1).reshape(-1, windows.shape[1])


def patch_windows(window_idx: np.ndarray, num_patches: int) -> np.ndarray:
    """[num_patches] int: the window each patch belongs to (Molmo2's windows partition the grid)."""
    owner = np.full(num_patches, -1, np.int32)
    for w, row in enumerate(window_idx):
        owner[row[row >= 0]] = w
    assert (owner >= 0).all(), "every patch must belong to a window"
    return owner


def frame_windows(cfg: Molmo2Config) -> np.ndarray:
    """The windows of one frame of `cfg`'s patch grid: [windows, window] int32, -1 = padding."""
    return pooling_windows(*cfg.vision.patch_grid, *cfg.adapter.pooling_size)


def windows_per_frame(cfg: Molmo2Config) -> int:
    """LLM vision tokens per frame before pruning (81 for Molmo2's 27x27 grid and 3x3 pooling)."""
    return len(frame_windows(cfg))
