"""STTS inside Molmo2, top to bottom: score, bias, select, pack, the later ViT blocks, unpack, pool (in the
ViT), then the removal of pruned placeholders from the LLM sequence.

`encode_video_pruned` runs on the bound parts of a Molmo2 model (its ViT, scorer and pooling), so the
parameter tree is the unpruned model's plus `scorer`. Every shape is static: the budget of each video is
known on the host (`budget`), keep masks and index maps carry the data-dependent part, and a row the static
buffers cannot hold is flagged (`vit_overflow`, `llm_overflow`, `placeholder_mismatch`), never cut silently.
"""

from __future__ import annotations

from collections.abc import Callable

import flax.struct
import jax
import jax.numpy as jnp

from stts_jax.models.config import Molmo2Config
from stts_jax.models.llm import TokenSequence
from stts_jax.models.vit import VisionTransformer
from stts_jax.stts import budget, packing, pruning, tome
from stts_jax.stts.scorer import Scorer, aux_squared_error, score_bias, temporal_dissimilarity
from stts_jax.windows import frame_windows, patch_windows

Array = jax.Array


@flax.struct.dataclass
class PrunedVideo:
    """What the pruned ViT hands the LLM side.

    tokens: [batch, capacity, dim] connector tokens of the kept windows, frame-major (padding past each
      row's kept count); keep: [batch, frames, windows] bool; aux_sum: the scorer's squared error summed
      over `aux_windows` windows (None without a scorer); vit_overflow: [batch] bool, the row kept more
      windows than the static buffer holds.
    """

    tokens: Array
    keep: Array
    aux_sum: Array | None
    aux_windows: Array | None
    vit_overflow: Array


@flax.struct.dataclass
class CompactedSequence:
    """The LLM sequence after pruned placeholders are removed (a static length).

    tokens: the compacted ids, segment ids and positions; source_index: [batch, length], the input slot
    each token came from (the input length for padding): any other per-token array (targets, loss masks)
    follows with `pruning.gather_tokens(x, source_index)`; llm_overflow: [batch] bool, more survivors than
    slots; placeholder_mismatch: [batch] bool, placeholders != windows x real frames.
    """

    tokens: TokenSequence
    source_index: Array
    llm_overflow: Array
    placeholder_mismatch: Array


def encode_video_pruned(
    cfg: Molmo2Config,
    vit: VisionTransformer,
    scorer: Scorer | None,
    pool: Callable[[Array, Array], tuple[Array, dict]],
    random_key: Callable[[], Array],
    pixel_values: Array,
    frame_video_ids: Array,
    max_videos_per_row: int,
) -> tuple[PrunedVideo, dict[str, Array]]:
    """STTS in the ViT. pixel_values: [batch, frames, patches, patch_dim]; frame_video_ids: [batch, frames]
    (the video 1, 2, ... of each frame slot, 0 = padding), at most `max_videos_per_row` videos per row
    (more are flagged, `vit_overflow`). `pool(features [batch * frames, patches, dim],
    pooling_idx [batch, tokens, window])` is the connector; `random_key()` draws the `random` baseline's key.
    Returns the pruned video and the named intermediates (scores, packing, hidden states)."""
    s = cfg.stts
    b, f, n, p = pixel_values.shape
    window_idx = frame_windows(cfg)  # [W, window] static
    num_windows = window_idx.shape[0]
    patch_window = patch_windows(window_idx, n)
    video, times, _ = pruning.frame_layout(frame_video_ids)
    real = video > 0
    depths = set(cfg.vit_feature_depths)
    out: dict[str, Array] = {}

    # 1. Blocks 0..l dense; score every window of block l's output.
    x, hidden = vit.run(vit.embed(pixel_values.reshape(b * f, n, p)), 0, s.layer + 1, depths)
    valid = jnp.asarray(window_idx >= 0)
    window_patches = (x[:, jnp.maximum(window_idx, 0)] * valid[..., None]).reshape(b, f, num_windows, -1, x.shape[-1])
    bias, aux_sum, aux_count = None, None, None
    if s.uses_scorer:
        scores = scorer(window_patches, valid, times)
        target = temporal_dissimilarity(window_patches, times)
        aux_sum = aux_squared_error(scores, target, times, real, s.aux_stop_gradient)
        aux_count = aux_windows(frame_video_ids, num_windows)
        # 2. Block l+1 dense, its keys biased by the log-scores (the scorer's gradient path besides aux).
        bias = score_bias(scores, patch_window, cfg.vision.patch_grid, times, real, s).reshape(b * f, 1, 1, n)
    elif s.method == "heuristic":
        scores = temporal_dissimilarity(window_patches, times)
    elif s.method == "random":
        scores = jax.random.uniform(random_key(), (b, f, num_windows))
    x, dense_hidden = vit.run(x, s.layer + 1, s.layer + 2, depths, bias=bias)
    hidden.update(dense_hidden)
    prune_table = budget.prune_table(f, num_windows, s.prune_ratio)

    # 3. Each video drops its budget of lowest-scored windows (frame 0 never). ToMe instead merges its
    # budget of most similar windows into their matches in the previous frame (`tome`), with their sizes
    # as a per-key attention bias in the later blocks.
    key_bias = None
    if s.method == "tome":
        window_features = (x[:, jnp.maximum(window_idx, 0)] * valid[..., None]).reshape(
            b, f, num_windows, -1, x.shape[-1]
        )
        similarity, match = tome.best_previous_match(window_features, valid, frame_video_ids)
        scores = 1.0 - similarity
        keep = pruning.select_windows(scores, frame_video_ids, prune_table)
        roots = tome.merge_roots(keep, match)
        merged, sizes = tome.merge_patches(x.reshape(b, f * n, -1), roots, window_idx, patch_window)
        x = merged.reshape(b * f, n, -1)
        if s.layer + 2 in hidden:
            hidden[s.layer + 2] = x
        key_bias = jnp.log(jnp.maximum(sizes, 1.0))
        out["tome/sizes"] = sizes.reshape(b, f, n)
    else:
        keep = pruning.select_windows(scores, frame_video_ids, prune_table)
    capacity = budget.kept_capacity(f, num_windows, s.prune_ratio, max_videos_per_row)

    # 4. The kept patches of all frames of a row packed into one static buffer; the later blocks run on it only.
    layout = packing.FrameLayout.of(window_idx, n)
    plan = packing.plan_packing(packing.patch_keep_mask(keep, patch_window), layout.slots(capacity, f), layout.granule)
    packed = packing.pack(x.reshape(b, f * n, -1), plan)
    later = {d for d in depths if d > s.layer + 2}
    segments = {"frame_segments": plan.segment_ids, "frame_len": n, "frame_granule": layout.granule}
    if key_bias is not None:
        segments["frame_key_bias"] = packing.pack(key_bias[..., None], plan)[..., 0]
    _, packed_hidden = vit.run(packed, s.layer + 2, cfg.vit_depth, later, **segments)
    for d, h in packed_hidden.items():
        hidden[d] = packing.unpack(h, plan, f * n).reshape(b * f, n, -1)

    # 5. Pool exactly the kept windows, in frame-major order.
    kept_ids, kept_valid = pruning.kept_window_list(keep, capacity)
    frame, window = kept_ids // num_windows, kept_ids % num_windows
    patches = jnp.asarray(window_idx)[window]
    pooling_idx = jnp.where((patches >= 0) & kept_valid[..., None], frame[..., None] * n + patches, -1)
    tokens, conn_out = pool(vit.features(hidden), pooling_idx)
    kept_windows = keep.sum((1, 2))
    out.update(conn_out)
    out.update(
        {
            "stts/scores": scores,
            "stts/packing_efficiency": packing.packing_efficiency(plan),
            "stts/kept_windows": kept_windows,
            "vit/packed_segment_ids": plan.segment_ids,
        }
    )
    out.update({f"vit/block_{d}": h for d, h in hidden.items()})
    # More kept windows than the static buffer holds (a row with more than max_videos_per_row videos).
    pruned = PrunedVideo(tokens, keep, aux_sum, aux_count, vit_overflow=kept_windows > capacity)
    return pruned, out


def aux_windows(frame_video_ids: Array, windows: int) -> Array:
    """The windows the auxiliary loss averages over: those of every frame after its video's first."""
    video, times, _ = pruning.frame_layout(frame_video_ids)
    return ((video > 0) & (times > 0)).sum() * windows


def remove_pruned_placeholders(
    cfg: Molmo2Config, sequence: TokenSequence, keep: Array, frame_video_ids: Array, length: int
) -> CompactedSequence:
    """6. The LLM side: placeholders of pruned windows leave the sequence in-graph (to the static `length`);
    positions renumbered or kept (`stts.position_policy`).
    The k-th placeholder of a row is its k-th window, frame-major; keep: [batch, frames, windows]."""
    s = cfg.stts
    input_ids, segment_ids = sequence.input_ids, sequence.segment_ids
    survive = pruning.surviving_tokens(input_ids, segment_ids, keep.reshape(keep.shape[0], -1), cfg.image_patch_id)
    positions = sequence.positions
    if s.position_policy == "renumber":
        positions = pruning.renumber_positions(positions, segment_ids, survive)
    index, overflow = pruning.compaction_index(survive, length)
    placeholders = (input_ids == cfg.image_patch_id).sum(-1)
    gather = lambda x: pruning.gather_tokens(x, index)
    return CompactedSequence(
        tokens=TokenSequence(gather(input_ids), gather(segment_ids), gather(positions)),
        source_index=index,
        llm_overflow=overflow,
        placeholder_mismatch=placeholders != keep.shape[2] * (frame_video_ids > 0).sum(-1),
    )
