"""Molmo2's video preprocessing on the host (NumPy): frame sampling, resize, normalisation, patchify.

The same as transformers' `Molmo2VideoProcessor` for the same frames (up to one grey level on the
rare values where float32 rounding order decides a .5 tie before the uint8 rounding): bilinear resize
with half-pixel centres and no antialiasing (as torchvision's tensor resize with antialias=False),
uint8 frames rounded and clamped back to uint8 after resizing, scaled to [0, 1] and normalised with
mean = std = 0.5, then cut into row-major patches flattened as (patch_row, patch_col, channel).
"""

from __future__ import annotations

import math

import numpy as np

MEAN = STD = 0.5


def sample_frames(
    times: np.ndarray,
    max_frames: int,
    max_fps: float = 2.0,
    start: float | None = None,
    end: float | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Which frames of a video to use, from its frames' presentation times [n] (seconds, increasing)
    -> (frame indices [T], their timestamps [T]).

    Molmo2's sampling, in time: from the first frame at or after `start` to the last at or before
    `end`, one sample every 1 / `max_fps` seconds; if that gives more than `max_frames`, `max_frames`
    samples spread uniformly over the clip, always including its last frame. Each sample takes the
    frame on screen at that time (the last one shown at or before it), each frame at most once, so a
    variable frame rate is followed exactly and a video slower than `max_fps` is taken whole.
    """
    times = np.asarray(times, np.float64)
    if times.size == 0:
        raise ValueError("a video needs frames (got none)")
    first = 0 if start is None else int(np.searchsorted(times, start - 1e-9, side="left"))
    last = times.size - 1 if end is None else int(np.searchsorted(times, end + 1e-9, side="right")) - 1
    if first >= times.size or last < first:
        raise ValueError(f"the clip [{start}, {end}] s holds no frame of this {times[-1]:.2f} s video")
    span = times[last] - times[first]
    count = math.floor(span * max_fps + 1e-9) + 1
    if count <= max_frames:
        targets = times[first] + np.arange(count) / max_fps
    else:
        targets = np.linspace(times[first], times[last], max_frames)
    indices = np.unique(np.searchsorted(times, targets + 1e-9, side="right") - 1)
    return indices, times[indices]


def _resize_axis(x: np.ndarray, size: int, axis: int) -> np.ndarray:
    """Linear interpolation along one axis, half-pixel centres, clamped at the borders."""
    n = x.shape[axis]
    # float32 arithmetic in torch's order, so that rounding back to uint8 agrees
    src = np.maximum(np.float32(n / size) * (np.arange(size, dtype=np.float32) + np.float32(0.5)) - np.float32(0.5), 0)
    lo = np.minimum(np.floor(src).astype(np.int64), n - 1)
    hi = np.minimum(lo + 1, n - 1)
    w = (src - lo).astype(np.float32)
    shape = [1] * x.ndim
    shape[axis] = size
    w = w.reshape(shape)
    return np.take(x, lo, axis=axis) * (1 - w) + np.take(x, hi, axis=axis) * w


def resize(frames: np.ndarray, size: int) -> np.ndarray:
    """[T, H, W, 3] uint8 -> [T, size, size, 3] uint8 (resized in float, rounded back, as transformers).
    Frames already stored at that size come back as they are (the interpolation is then the identity)."""
    if frames.shape[1:3] == (size, size):
        return frames
    x = frames.astype(np.float32)
    x = _resize_axis(_resize_axis(x, size, 2), size, 1)  # width first, as torch
    return np.clip(np.round(x), 0, 255).astype(np.uint8)


def normalize(pixels):
    """uint8 pixels (NumPy or JAX) -> float32 in [-1, 1]: (x / 255 - 0.5) / 0.5."""
    return (pixels.astype("float32") / 255.0 - MEAN) / STD


def patchify(frames: np.ndarray, patch: int) -> np.ndarray:
    """[T, H, W, C] -> [T, (H/patch) * (W/patch), patch * patch * C], patches row-major."""
    t, h, w, c = frames.shape
    x = frames.reshape(t, h // patch, patch, w // patch, patch, c).transpose(0, 1, 3, 2, 4, 5)
    return x.reshape(t, (h // patch) * (w // patch), patch * patch * c)


def unpatchify(patches: np.ndarray, grid: tuple[int, int], patch: int) -> np.ndarray:
    """`patchify`'s inverse: [T, rows * cols, patch * patch * C] -> [T, rows * patch, cols * patch, C]."""
    (t, _, dim), (rows, cols) = patches.shape, grid
    c = dim // (patch * patch)
    x = patches.reshape(t, rows, cols, patch, patch, c).transpose(0, 1, 3, 2, 4, 5)
    return x.reshape(t, rows * patch, cols * patch, c)


def video_patches(frames: np.ndarray, image_size: int, patch_size: int) -> np.ndarray:
    """Decoded uint8 frames [T, H, W, 3] -> the ViT's input [T, patches, patch_dim] float32."""
    return normalize(patchify(resize(frames, image_size), patch_size))
