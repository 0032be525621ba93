"""What the benchmarks run: one-video rows in Molmo2's prompt layout, and the unpruned / STTS configs compared.

A row holds one video of `frames` frames: per frame a timestamp (about three text tokens), a
frame-start marker, one placeholder per pooling window and a frame-end marker; then `text_tokens`
of text whose last `ANSWER_TOKENS` are the answer (the training targets). With pruning the LLM runs
on the compacted length, `prompt_length - floor(windows * k * frames)`.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from stts_jax.models.config import Molmo2Config
from stts_jax.stts import budget, packing
from stts_jax.vlm.model import RowLayout, VideoBatch
from stts_jax.windows import frame_windows, pooling_windows, windows_per_frame

TIMESTAMP_TOKENS = 3  # "12.5 " is about three tokens before each frame
ANSWER_TOKENS = 4


def prompt_length(cfg: Molmo2Config, frames: int, text_tokens: int) -> int:
    return frames * (windows_per_frame(cfg) + 2 + TIMESTAMP_TOKENS) + text_tokens


def pruned_length(cfg: Molmo2Config, frames: int, text_tokens: int, prune_ratio: float) -> int:
    """LLM tokens per row after the pruned placeholders are removed."""
    return prompt_length(cfg, frames, text_tokens) - budget.pruned_windows(frames, windows_per_frame(cfg), prune_ratio)


def method_config(base: Molmo2Config, prune_ratio: float | None) -> Molmo2Config:
    """`base` unpruned (prune_ratio None) or with STTS at ratio k (its other STTS fields, e.g. the layer, kept)."""
    if prune_ratio is None:
        return base.with_stts(method="none")
    return base.with_stts(method="stts", prune_ratio=prune_ratio)


def row_layout(cfg: Molmo2Config, frames: int, text_tokens: int) -> RowLayout:
    """One video per row; when `cfg` prunes, the LLM sized to the compacted length."""
    if not cfg.stts.prunes:
        return RowLayout()
    return RowLayout(pruned_length(cfg, frames, text_tokens, cfg.stts.prune_ratio))


def packing_efficiency(cfg: Molmo2Config, frames: int, prune_ratio: float) -> float:
    """Kept patches / packed ViT slots for a full-length video, without running the model.

    The buffer is sized for the worst case (`packing.FrameLayout.slots`: the most real patches per kept
    window plus each frame's worst alignment waste); windows at a ragged border hold fewer real patches,
    so this counts the mean real patches per window (which windows survive depends on the scores).
    Exact where the windows tile the grid (Molmo2's 27 x 27); `step` reports the measured value.
    """
    windows = windows_per_frame(cfg)
    capacity = budget.kept_capacity(frames, windows, prune_ratio, 1)
    slots = packing.FrameLayout.of(frame_windows(cfg), cfg.vision.num_patches).slots(capacity, frames)
    return budget.kept_windows(frames, windows, prune_ratio) * cfg.vision.num_patches / windows / slots


def abstract_batch(cfg: Molmo2Config, batch: int, frames: int, seq: int, layout: RowLayout | None = None) -> VideoBatch:
    """Shapes and dtypes of a batch of `batch` rows of `seq` tokens and `frames` frames in `layout` (default:
    one video per row; nothing allocated)."""
    v = cfg.vision
    windows = pooling_windows(*v.patch_grid, *cfg.adapter.pooling_size)
    ints = lambda *shape: jax.ShapeDtypeStruct(shape, jnp.int32)
    return VideoBatch(
        input_ids=ints(batch, seq),
        segment_ids=ints(batch, seq),
        positions=ints(batch, seq),
        pixel_values=jax.ShapeDtypeStruct((batch, frames, v.num_patches, v.patch_dim), jnp.dtype(cfg.dtype)),
        pooling_idx=ints(batch, frames * len(windows), windows.shape[1]),
        frame_video_ids=ints(batch, frames),
        layout=layout or RowLayout(),
    )


def scorer_inputs(
    cfg: Molmo2Config, batch: int, frames: int
) -> tuple[jax.ShapeDtypeStruct, np.ndarray, jax.ShapeDtypeStruct]:
    """What the scorer sees: block-l features per window [batch, frames, windows, window, hidden] (abstract),
    the static window validity, and the frame times."""
    windows = frame_windows(cfg)
    patches = jax.ShapeDtypeStruct((batch, frames, *windows.shape, cfg.vision.hidden_size), jnp.dtype(cfg.dtype))
    times = jax.ShapeDtypeStruct((batch, frames), jnp.int32)
    return patches, np.asarray(windows >= 0), times


def synthetic_batch(
    cfg: Molmo2Config, batch: int, frames: int, text_tokens: int, seed: int = 0
) -> tuple[VideoBatch, jax.Array]:
    """Random pixels and text in the prompt layout above -> (batch, targets [batch, seq], 1 on answer tokens)."""
    rng = np.random.default_rng(seed)
    v = cfg.vision
    windows = windows_per_frame(cfg)
    text = lambda n: rng.integers(3, cfg.text.vocab_size, size=n)
    rows = []
    for _ in range(batch):
        ids = []
        for _ in range(frames):
            ids += [*text(TIMESTAMP_TOKENS), cfg.frame_start_token_id]
            ids += [cfg.image_patch_id] * windows + [cfg.frame_end_token_id]
        rows.append(ids + list(text(text_tokens)))
    input_ids = np.asarray(rows, np.int32)
    seq = input_ids.shape[1]
    targets = np.zeros_like(input_ids)
    targets[:, seq - ANSWER_TOKENS :] = 1
    video = VideoBatch.of_frames(
        cfg,
        input_ids,
        np.ones((batch, seq), np.int32),
        np.broadcast_to(np.arange(seq, dtype=np.int32), (batch, seq)),
        jnp.asarray(rng.normal(size=(batch, frames, v.num_patches, v.patch_dim)), jnp.dtype(cfg.dtype)),
        np.ones((batch, frames), np.int32),
    )
    return video, jnp.asarray(targets)
