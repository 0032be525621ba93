"""The Molmo2 video VLM: ViT -> connector -> tokens added to placeholder embeddings -> LLM -> logits.

With a pruning method (`cfg.stts`), STTS cuts the ViT after block l: it scores every pooling window,
biases block l+1 with log-scores, drops each video's lowest-scored windows, runs the remaining
blocks on the packed kept patches only, pools only kept windows, and removes the pruned
placeholders from the LLM sequence in-graph.
"""

from __future__ import annotations

import flax.linen as nn
import flax.struct
import jax
import jax.numpy as jnp

from stts_jax.data.pooling import pooling_windows
from stts_jax.models.attention import SegmentMask
from stts_jax.models.config import Molmo2Config
from stts_jax.models.connector import Connector
from stts_jax.models.layers import dtypes
from stts_jax.models.llm import TextModel
from stts_jax.models.vit import VisionTransformer
from stts_jax.stts import budget, packing, pruning
from stts_jax.stts.scorer import Scorer, aux_loss, patch_windows, score_bias, temporal_dissimilarity

Array = jax.Array


@flax.struct.dataclass
class VideoBatch:
    """One micro-batch of (possibly packed) rows, all shapes static.

    input_ids: [batch, seq] int32, with `image_patch_id` placeholders.
    segment_ids: [batch, seq] int32, the example each token belongs to; 0 = padding.
    positions: [batch, seq] int32, LLM position ids (restart per example).
    pixel_values: [batch, frames, patches, patch_dim] float, all frames of the row's videos.
    pooling_idx: [batch, windows, window] int32, per LLM vision token the row-flattened
      (frame * patches + patch) indices it pools; -1 = padding. The k-th window of a row feeds the
      k-th placeholder of that row.
    frame_video_ids: [batch, frames] int32 or None, the video (1, 2, ...) of each frame slot, 0 =
      padding slot; a video's frames contiguous and in time order, real slots first. Required by
      the pruning methods, which build windows frame-major from `cfg.adapter.pooling_size`.
    """

    input_ids: Array
    segment_ids: Array
    positions: Array
    pixel_values: Array
    pooling_idx: Array
    frame_video_ids: Array | None = None


def placeholder_ranks(input_ids: Array, image_patch_id: int) -> tuple[Array, Array]:
    """is_placeholder [batch, seq] and each placeholder's rank among its row's placeholders."""
    is_placeholder = input_ids == image_patch_id
    return is_placeholder, jnp.cumsum(is_placeholder, axis=1) - 1


class Molmo2(nn.Module):
    """Molmo2ForConditionalGeneration (+ STTS). `__call__(batch)` -> (logits [batch, seq, vocab], out).

    With pruning, `seq` is `cfg.stts.llm_seq_len` (or the input length) and out["llm/*"] hold the
    compacted input ids, segment ids and positions the logits refer to. Rows the static buffers
    cannot represent are flagged, never dropped silently: out["stts/vit_overflow"],
    out["stts/llm_overflow"] and out["stts/placeholder_mismatch"] (placeholders != windows x real
    frames); a training or evaluation step must raise on any of them.
    """

    cfg: Molmo2Config

    def setup(self):
        self.vit = VisionTransformer(self.cfg)
        self.connector = Connector(self.cfg)
        self.text = TextModel(self.cfg)
        self.lm_head = nn.Dense(self.cfg.text.vocab_size, use_bias=False, **dtypes(self.cfg))
        if self.cfg.stts.uses_scorer:
            self.scorer = Scorer(self.cfg)

    def pool(self, features: Array, pooling_idx: Array) -> tuple[Array, dict[str, Array]]:
        """ViT features [batch * frames, patches, dim] + windows [batch, tokens, window] -> [batch, tokens, dim]."""
        b, t = pooling_idx.shape[:2]
        per_row = features.shape[0] // b * features.shape[1]
        row_offset = (jnp.arange(b, dtype=pooling_idx.dtype) * per_row)[:, None, None]
        flat_idx = jnp.where(pooling_idx >= 0, pooling_idx + row_offset, -1).reshape(b * t, -1)
        tokens, conn_out = self.connector(features, flat_idx)
        out = {f"connector/{k}": v.reshape(b, t) for k, v in conn_out.items()}
        out["connector/tokens"] = tokens.reshape(b, t, -1)
        return out["connector/tokens"], out

    def encode_video(self, pixel_values: Array, pooling_idx: Array) -> tuple[Array, dict[str, Array]]:
        """[batch, frames, patches, patch_dim] + [batch, windows, window] -> tokens [batch, windows, dim]."""
        b, f, n, p = pixel_values.shape
        features, out = self.vit(pixel_values.reshape(b * f, n, p))
        tokens, conn_out = self.pool(features, pooling_idx)
        return tokens, out | conn_out

    def encode_video_pruned(self, pixel_values: Array, frame_video_ids: Array) -> tuple[Array, Array, dict]:
        """STTS in the ViT -> (tokens of kept windows [batch, capacity, dim] in frame-major order,
        keep [batch, frames, windows], out)."""
        cfg, s = self.cfg, self.cfg.stts
        b, f, n, p = pixel_values.shape
        rows, cols = cfg.vision.patch_grid
        window_idx = pooling_windows(rows, cols, *cfg.adapter.pooling_size)  # [W, window] static
        num_windows = window_idx.shape[0]
        patch_window = patch_windows(window_idx, n)
        video, times, _ = pruning.frame_layout(frame_video_ids)
        real = video > 0
        depths = set(cfg.vit_feature_depths)
        out: dict = {}

        x, hidden = self.vit.run(self.vit.embed(pixel_values.reshape(b * f, n, p)), 0, s.layer + 1, depths)
        valid = jnp.asarray(window_idx >= 0)
        window_patches = (x[:, jnp.maximum(window_idx, 0)] * valid[..., None]).reshape(
            b, f, num_windows, -1, x.shape[-1]
        )
        bias = None
        if s.uses_scorer:
            scores = self.scorer(window_patches, valid, times)
            target = temporal_dissimilarity(window_patches, times)
            out["stts/aux_loss"] = aux_loss(scores, target, times, real, s.aux_stop_gradient)
            bias = score_bias(scores, patch_window, (rows, cols), times, real, s).reshape(b * f, 1, 1, n)
        elif s.method == "heuristic":
            scores = temporal_dissimilarity(window_patches, times)
        else:  # random
            scores = jax.random.uniform(self.make_rng("stts"), (b, f, num_windows))
        x, dense_hidden = self.vit.run(x, s.layer + 1, s.layer + 2, depths, bias=bias)
        hidden.update(dense_hidden)

        keep = pruning.select_windows(scores, frame_video_ids, budget.prune_table(f, num_windows, s.prune_ratio))
        capacity = budget.kept_capacity(f, num_windows, s.prune_ratio, s.max_videos_per_row)
        slots = packing.buffer_size(capacity, window_idx.shape[1], n)
        plan = packing.plan_packing(packing.patch_keep_mask(keep, patch_window), slots)
        packed = packing.pack(x.reshape(b, f * n, -1), plan)
        later = {d for d in depths if d > s.layer + 2}
        _, packed_hidden = self.vit.run(
            packed, s.layer + 2, cfg.vit_depth, later, frame_segments=plan.segment_ids, frame_len=n
        )
        for d, h in packed_hidden.items():
            hidden[d] = packing.unpack(h, plan, f * n).reshape(b * f, n, -1)

        kept_ids, kept_valid = pruning.kept_window_list(keep, capacity)
        frame, window = kept_ids // num_windows, kept_ids % num_windows
        patches = jnp.asarray(window_idx)[window]
        pooling_idx = jnp.where((patches >= 0) & kept_valid[..., None], frame[..., None] * n + patches, -1)
        tokens, conn_out = self.pool(self.vit.features(hidden), pooling_idx)
        out.update(conn_out)
        out.update(
            {
                "stts/scores": scores,
                "stts/keep": keep,
                "stts/packing_efficiency": packing.packing_efficiency(plan),
                "stts/kept_windows": keep.sum((1, 2)),
                # More kept windows than the static buffer holds (a row with more videos than
                # stts.max_videos_per_row): kept tokens were cut, which the caller must treat as an error.
                "stts/vit_overflow": keep.sum((1, 2)) > capacity,
                "vit/packed_segment_ids": plan.segment_ids,
            }
        )
        out.update({f"vit/block_{d}": h for d, h in hidden.items()})
        return tokens, keep, out

    def embed_with_video(self, input_ids: Array, video_tokens: Array) -> Array:
        """Token embeddings with each row's k-th video token added to its k-th placeholder."""
        embeddings = self.text.embed_tokens(input_ids)
        is_placeholder, rank = placeholder_ranks(input_ids, self.cfg.image_patch_id)
        rank = jnp.clip(rank, 0, video_tokens.shape[1] - 1)
        video = jnp.take_along_axis(video_tokens, rank[..., None], axis=1)
        return embeddings + jnp.where(is_placeholder[..., None], video, 0).astype(embeddings.dtype)

    def vision_block_ids(self, input_ids: Array, segment_ids: Array) -> Array:
        """Vision tokens of an example form one bidirectional block, identified by the segment id."""
        is_vision = jnp.isin(input_ids, jnp.asarray(self.cfg.vision_token_ids))
        return jnp.where(is_vision, segment_ids, 0)

    def prepare(self, batch: VideoBatch) -> tuple[dict[str, Array], Array, dict]:
        """The LLM's token arrays (input_ids, segment_ids, positions) and the video tokens to add."""
        tokens = {"input_ids": batch.input_ids, "segment_ids": batch.segment_ids, "positions": batch.positions}
        s = self.cfg.stts
        if not s.prunes:
            video, out = self.encode_video(batch.pixel_values, batch.pooling_idx)
            return tokens, video, out
        if batch.frame_video_ids is None:
            raise ValueError(f"stts.method={s.method!r} needs VideoBatch.frame_video_ids (the video of each frame).")
        video, keep, out = self.encode_video_pruned(batch.pixel_values, batch.frame_video_ids)
        survive = pruning.surviving_tokens(
            batch.input_ids, batch.segment_ids, keep.reshape(keep.shape[0], -1), self.cfg.image_patch_id
        )
        if s.position_policy == "renumber":
            tokens["positions"] = pruning.renumber_positions(batch.positions, batch.segment_ids, survive)
        index, out["stts/llm_overflow"] = pruning.compaction_index(survive, s.llm_seq_len or batch.input_ids.shape[1])
        # Any other per-token array (targets, loss masks) follows with pruning.gather_tokens(x, index).
        out["llm/source_index"] = index
        placeholders = (batch.input_ids == self.cfg.image_patch_id).sum(-1)
        out["stts/placeholder_mismatch"] = placeholders != keep.shape[2] * (batch.frame_video_ids > 0).sum(-1)
        return {k: pruning.gather_tokens(v, index) for k, v in tokens.items()}, video, out

    def llm(self, tokens: dict[str, Array], video: Array, cache=None) -> tuple[Array, Array, Array]:
        """Logits of the LLM over `tokens` (input_ids, segment_ids, positions: [batch, seq]) with the
        row's k-th `video` token [batch, k, dim] added to its k-th placeholder -> (logits, hidden, cache)."""
        input_ids, segment_ids = tokens["input_ids"], tokens["segment_ids"]
        embeddings = self.embed_with_video(input_ids, video)
        blocks = self.vision_block_ids(input_ids, segment_ids)
        if cache is None:
            segments = SegmentMask.self_attention(segment_ids, blocks)
        else:
            pad = cache["k"].shape[2] - input_ids.shape[1]
            widen = lambda x: jnp.pad(x, ((0, 0), (0, pad)))
            slots = jnp.broadcast_to(jnp.arange(cache["k"].shape[2], dtype=jnp.int32), widen(blocks).shape)
            segments = SegmentMask(
                segment_ids, widen(segment_ids), slots[:, : blocks.shape[1]], slots, blocks, widen(blocks)
            )
        hidden, cache = self.text(embeddings, tokens["positions"], segments, cache, 0)
        return self.lm_head(hidden), hidden, cache

    def __call__(self, batch: VideoBatch, cache=None) -> tuple[Array, dict]:
        """Full forward (training, scoring, or prefill into `cache` from slot 0)."""
        tokens, video, out = self.prepare(batch)
        logits, hidden, cache = self.llm(tokens, video, cache)
        out.update({f"llm/{k}": v for k, v in tokens.items()})
        out["llm/hidden"] = hidden
        out["cache"] = cache
        return logits, out

    def decode(self, input_ids: Array, positions: Array, segments: SegmentMask, cache, cache_index):
        """One step of text tokens [batch, 1] written at `cache_index`; returns (logits, cache)."""
        hidden, cache = self.text(self.text.embed_tokens(input_ids), positions, segments, cache, cache_index)
        return self.lm_head(hidden), cache
