"""Static-shape pruning: which windows each video keeps, and compaction of what survives.

Rows hold frame slots [batch, frames]; `frame_video_ids` names the video of each slot (1, 2, ... in
order, 0 = padding slot, a video's frames contiguous and in time order). All outputs have static
shapes; the data-dependent part lives in masks and index maps.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

Array = jax.Array


def video_index(frame_video_ids: Array) -> Array:
    """[b, f]: videos renumbered 1, 2, ... in slot order (0 = padding), whatever labels the rows use;
    a video is a run of equal positive labels."""
    real = frame_video_ids > 0
    previous = jnp.concatenate([jnp.full_like(frame_video_ids[:, :1], -1), frame_video_ids[:, :-1]], axis=1)
    return jnp.where(real, jnp.cumsum(real & (frame_video_ids != previous), axis=1), 0)


def frame_layout(frame_video_ids: Array) -> tuple[Array, Array, Array]:
    """(video [b, f] = `video_index` (0 = padding slot), frame_times [b, f] = index within its video,
    video_frames [b, f] = T of its video)."""
    video = video_index(frame_video_ids)
    real = video > 0
    f = video.shape[1]
    slots = jnp.arange(f)
    previous = jnp.concatenate([jnp.full_like(video[:, :1], -1), video[:, :-1]], axis=1)
    starts = jax.lax.cummax(jnp.where(video != previous, slots, 0), axis=1)
    counts = jax.vmap(lambda ids: jax.ops.segment_sum(jnp.ones_like(ids), ids, num_segments=f + 1))(video)
    video_frames = jnp.take_along_axis(counts, video, axis=1)
    return video, jnp.where(real, slots - starts, 0), jnp.where(real, video_frames, 0)


def select_windows(scores: Array, frame_video_ids: Array, prune_table: np.ndarray) -> Array:
    """keep [batch, frames, windows] bool: each video drops its `prune_table[T]` lowest-scored windows.

    The budget is global over the video's frames (so frames lose unevenly); frame 0 is never
    dropped; padding slots are never kept. The selection is a hard sort and passes no gradient.
    """
    video, times, video_frames = frame_layout(frame_video_ids)
    real = video > 0
    b, f, w = scores.shape
    scores = jax.lax.stop_gradient(scores).astype(jnp.float32)
    rank_score = jnp.where((times > 0)[..., None], scores, jnp.inf).reshape(b, f * w)
    video = jnp.where(real, video, f + 1)  # padding slots sort after every video
    video = jnp.broadcast_to(video[..., None], (b, f, w)).reshape(b, f * w)
    budget = jnp.asarray(prune_table)[video_frames]  # [b, f] windows to drop from this slot's video
    budget = jnp.broadcast_to(budget[..., None], (b, f, w)).reshape(b, f * w)
    order = jnp.broadcast_to(jnp.arange(f * w), (b, f * w))
    sorted_video, _, sorted_budget, sorted_item = jax.lax.sort((video, rank_score, budget, order), num_keys=2)
    position = jnp.arange(f * w)
    first_of_video = jax.lax.cummax(
        jnp.where(sorted_video != jnp.pad(sorted_video, ((0, 0), (1, 0)), constant_values=-1)[:, :-1], position, 0),
        axis=1,
    )
    dropped_sorted = (position - first_of_video) < sorted_budget
    dropped = jax.vmap(lambda idx, d: jnp.zeros(f * w, bool).at[idx].set(d))(sorted_item, dropped_sorted)
    return (~dropped).reshape(b, f, w) & real[..., None]


def kept_window_list(keep: Array, capacity: int) -> tuple[Array, Array]:
    """Row-flattened (frame * windows + window) ids of kept windows in order: [batch, capacity], valid."""
    b = keep.shape[0]
    flat = keep.reshape(b, -1)
    ids = jax.vmap(lambda k: jnp.nonzero(k, size=capacity, fill_value=0)[0])(flat)
    return ids.astype(jnp.int32), jnp.arange(capacity)[None, :] < flat.sum(-1, keepdims=True)


def surviving_tokens(input_ids: Array, segment_ids: Array, keep_by_rank: Array, image_patch_id: int) -> Array:
    """[batch, seq] bool: real tokens that survive pruning. keep_by_rank [batch, windows] says, for the
    row's placeholders in order (the k-th placeholder is the k-th window), whether each is kept."""
    is_placeholder = input_ids == image_patch_id
    rank = jnp.clip(jnp.cumsum(is_placeholder, axis=1) - 1, 0, keep_by_rank.shape[1] - 1)
    return (segment_ids != 0) & (~is_placeholder | jnp.take_along_axis(keep_by_rank, rank, axis=1))


def renumber_positions(positions: Array, segment_ids: Array, keep: Array) -> Array:
    """Positions after removal, contiguous within each example (they restart per example)."""
    removed = ~keep & (segment_ids != 0)
    removed_before = jnp.cumsum(removed, axis=1) - removed
    at_start = jax.vmap(lambda r, seg: jax.ops.segment_min(r, seg, num_segments=seg.shape[0] + 1))(
        removed_before, segment_ids
    )
    return positions - (removed_before - jnp.take_along_axis(at_start, segment_ids, axis=1))


def compaction_index(keep: Array, length: int) -> tuple[Array, Array]:
    """Source slot of each of `length` output slots: the kept tokens of each row in order, then the
    input length (a padding source). Returns (index [batch, length], overflow [batch] bool: the row
    kept more than `length` tokens and the rest were cut, which the caller must treat as an error)."""
    s = keep.shape[1]
    index = jax.vmap(lambda k: jnp.nonzero(k, size=length, fill_value=s)[0])(keep)
    return index.astype(jnp.int32), keep.sum(-1) > length


def gather_tokens(x: Array, index: Array) -> Array:
    """A per-token array [batch, seq] moved to `compaction_index` order; padding sources give 0."""
    return jnp.take_along_axis(jnp.pad(x, ((0, 0), (0, 1))), index, axis=1)
