"""Pictures of what a pruning method chose: frames with the pruned windows dimmed, over the window scores.

Drawn with NumPy and a matplotlib colour map (no figure), so a training run can log one at every
evaluation without a display.
"""

from __future__ import annotations

import matplotlib
import numpy as np

from stts_jax.data.frames import unpatchify
from stts_jax.models.config import Molmo2Config
from stts_jax.windows import frame_windows, patch_windows

PRUNED_BRIGHTNESS = 0.25  # a pruned window is drawn at this fraction of its brightness


def kept_windows_picture(pixels: np.ndarray, keep: np.ndarray, scores: np.ndarray, cfg: Molmo2Config) -> np.ndarray:
    """Frames side by side, pruned windows dimmed (top row), and their window scores in viridis, scaled over
    the frames shown (bottom row).

    pixels: [frames, patches, patch_dim] uint8, the ViT's input before normalisation (`patchify`'s layout);
    keep: [frames, windows] bool; scores: [frames, windows] float. Returns uint8 [2 * height, frames *
    width, 3].
    """
    v = cfg.vision
    frames = unpatchify(np.asarray(pixels), v.patch_grid, v.patch_size)  # [T, H, W, 3]
    owner = patch_windows(frame_windows(cfg), v.num_patches)  # patch -> window
    rows, cols = v.patch_grid

    def per_pixel(per_window: np.ndarray) -> np.ndarray:  # [T, windows] -> [T, H, W]
        grid = per_window[:, owner].reshape(len(per_window), rows, cols)
        return grid.repeat(v.patch_size, axis=1).repeat(v.patch_size, axis=2)

    shade = np.where(per_pixel(np.asarray(keep, bool)), 1.0, PRUNED_BRIGHTNESS)[..., None]
    top = (frames * shade).astype(np.uint8)
    scores = np.asarray(scores, np.float64)
    low, high = scores.min(), scores.max()
    normalised = (scores - low) / (high - low) if high > low else np.zeros_like(scores)
    bottom = (matplotlib.colormaps["viridis"](per_pixel(normalised))[..., :3] * 255).astype(np.uint8)
    row = lambda images: np.concatenate(list(images), axis=1)
    return np.concatenate([row(top), row(bottom)], axis=0)
