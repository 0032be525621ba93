"""ToMe (token merging, Bolya et al. 2023) at STTS's place and budget: the baseline of STTS.md section 8.

Merging runs once, on the output of ViT block l+1, at the granularity of the connector's windows (a
window is a future LLM token), so each video loses exactly STTS's budget of windows and every later
buffer (packing, connector, LLM compaction) is STTS's. Bipartite soft matching between consecutive
frames of a video: frame t (t >= 1) is set A against frame t - 1 as set B; each A window finds its
most similar B window (cosine of the windows' mean features), and the video's `budget` A windows
with the most similar match merge into it (`select_windows` on the dissimilarity 1 - cosine, also
the `stts/scores` it reports; frame 0 is never merged, as in STTS). A strict alternating split could
merge at most half of the windows, fewer than STTS's budget at k >= 0.5 once frame 0 is kept;
consecutive frames allow any budget up to W (T - 1).
A window of frame t can both receive (from t + 1) and merge (into t - 1): chains end in a kept window
(frame indices fall along them) and are resolved by pointer jumping, so a kept window becomes the
size-weighted mean (all sizes start at 1) of every window merged into it, patch slot by patch slot:
it still pools into one LLM token. A member's patch whose slot the kept window lacks (ragged border
windows) is left out of the mean. `sizes` (members per kept patch) give proportional attention in the
later blocks: log(size) added to that key's logits.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np

from stts_jax.stts import pruning

Array = jax.Array


def best_previous_match(window_features: Array, valid: Array, frame_video_ids: Array) -> tuple[Array, Array]:
    """Bipartite matching of each window against the previous frame of its video.

    window_features: [batch, frames, windows, window, dim] patch features per window (zero where
    invalid); valid: [windows, window] bool. Returns (similarity [batch, frames, windows] float32,
    cosine with the best match, -1 (the least similar) for frame 0 of each video and padding;
    match [batch, frames, windows] int32, the row-flattened (frame * windows + window) id of the
    best match, or the window itself where there is none)."""
    b, f, w = window_features.shape[:3]
    _, times, _ = pruning.frame_layout(frame_video_ids)
    counts = jnp.maximum(valid.sum(-1), 1)[:, None].astype(jnp.float32)
    keys = window_features.astype(jnp.float32).sum(3) / counts  # [b, f, w, dim]
    keys = keys / jnp.maximum(jnp.linalg.norm(keys, axis=-1, keepdims=True), 1e-6)
    previous = jnp.concatenate([jnp.zeros_like(keys[:, :1]), keys[:, :-1]], axis=1)
    similarity = jnp.einsum("bfwd,bfvd->bfwv", keys, previous)
    best = jnp.argmax(similarity, axis=-1)
    has_previous = (times > 0)[..., None]
    self_id = jnp.arange(f)[:, None] * w + jnp.arange(w)[None, :]
    match = jnp.where(has_previous, (jnp.arange(f)[:, None] - 1) * w + best, self_id)
    return jnp.where(has_previous, similarity.max(-1), -1.0), match.astype(jnp.int32)


def merge_roots(keep: Array, match: Array) -> Array:
    """[batch, frames * windows] int32: the kept window each window ends in (itself if kept).
    keep, match: [batch, frames, windows]; a match lies in an earlier frame and frame 0 is kept, so
    chains are at most frames - 1 long and ceil(log2(frames)) pointer doublings resolve them."""
    b, f, w = keep.shape
    self_id = jnp.arange(f * w, dtype=jnp.int32)
    parent = jnp.where(keep.reshape(b, f * w), self_id, match.reshape(b, f * w))
    for _ in range(max(1, math.ceil(math.log2(max(f, 2))))):
        parent = jnp.take_along_axis(parent, parent, axis=1)
    return parent


def merge_patches(x: Array, roots: Array, window_idx: np.ndarray, patch_window: np.ndarray) -> tuple[Array, Array]:
    """x: [batch, frames * patches, dim] -> (merged x, sizes [batch, frames * patches] float32).

    Patch slot j of every window goes to slot j of its root window; a kept patch becomes the mean of
    the patches that land on it (size = their count; pruned patches keep their value, size 0).
    roots: [batch, frames * windows] from `merge_roots`; window_idx: [windows, window] (-1 = none);
    patch_window: [patches] the window of each patch."""
    b, total, _ = x.shape
    w, n = window_idx.shape[0], patch_window.shape[0]
    f = total // n
    slot_of_patch = np.zeros(n, np.int32)  # the slot each patch has in its own window
    for row in window_idx:
        slot_of_patch[row[row >= 0]] = np.nonzero(row >= 0)[0]
    patch_window_flat = jnp.asarray(np.arange(f)[:, None] * w + patch_window[None, :]).reshape(-1)
    root = roots[:, patch_window_flat]  # [b, f * n] the root window of each patch
    root_frame, root_window = root // w, root % w
    target = jnp.asarray(window_idx)[root_window, jnp.asarray(np.tile(slot_of_patch, f))]
    destination = jnp.where(target >= 0, root_frame * n + target, total)  # total = left out
    merge = jax.vmap(lambda values, ids: jax.ops.segment_sum(values, ids, num_segments=total + 1)[:total])
    sums = merge(x.astype(jnp.float32), destination)
    sizes = merge(jnp.ones((b, total), jnp.float32), destination)
    merged = jnp.where(sizes[..., None] > 0, sums / jnp.maximum(sizes, 1.0)[..., None], x.astype(jnp.float32))
    return merged.astype(x.dtype), sizes
