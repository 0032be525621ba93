"""The Molmo2 video VLM: ViT -> connector -> tokens added to placeholder embeddings -> LLM -> logits.

With a pruning method (`cfg.stts`), the video goes through `stts.method` instead (STTS in the ViT,
then the pruned placeholders removed from the LLM sequence in-graph).
"""

from __future__ import annotations

import dataclasses

import flax.linen as nn
import flax.struct
import jax
import jax.numpy as jnp

from stts_jax.models.attention import SegmentMask
from stts_jax.models.config import Molmo2Config
from stts_jax.models.connector import Connector
from stts_jax.models.layers import dtypes
from stts_jax.models.llm import TextModel, TokenSequence
from stts_jax.models.vit import VisionTransformer
from stts_jax.stts.method import CompactedSequence, PrunedVideo, encode_video_pruned, remove_pruned_placeholders
from stts_jax.stts.pruning import gather_tokens
from stts_jax.stts.scorer import Scorer
from stts_jax.windows import video_pooling_indices

Array = jax.Array


@dataclasses.dataclass(frozen=True)
class RowLayout:
    """The static shape of a batch's rows, fixed by whoever packed them (the data pipeline, evaluation): the
    pruning methods size their buffers from it, so the data's own figures are the only copy."""

    llm_seq_len: int | None = None  # LLM tokens per row after pruned placeholders leave; None = the input length
    max_videos_per_row: int = 1  # videos packed in one row (sizes the static kept-window buffer)

    def __post_init__(self):
        if self.llm_seq_len is not None and self.llm_seq_len <= 0:
            raise ValueError(f"RowLayout.llm_seq_len {self.llm_seq_len} must be positive (or None).")
        if self.max_videos_per_row < 1:
            raise ValueError(f"RowLayout.max_videos_per_row {self.max_videos_per_row} must be >= 1.")


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
    layout: the rows' static shape (static: part of the compiled program, not traced).
    """

    input_ids: Array
    segment_ids: Array
    positions: Array
    pixel_values: Array
    pooling_idx: Array
    frame_video_ids: Array | None = None
    layout: RowLayout = flax.struct.field(pytree_node=False, default=RowLayout())

    @classmethod
    def of_frames(
        cls,
        cfg: Molmo2Config,
        input_ids: Array,
        segment_ids: Array,
        positions: Array,
        pixel_values: Array,
        frame_video_ids: Array,
        layout: RowLayout | None = None,
    ) -> VideoBatch:
        """A batch whose every frame slot is pooled as Molmo2 pools a video (all windows of each frame,
        frame-major): the pooling indices follow from `cfg` and the frame slots of `pixel_values`."""
        b, frames = pixel_values.shape[:2]
        pooling = video_pooling_indices(frames, *cfg.vision.patch_grid, *cfg.adapter.pooling_size)
        return cls(
            input_ids=jnp.asarray(input_ids),
            segment_ids=jnp.asarray(segment_ids),
            positions=jnp.asarray(positions),
            pixel_values=jnp.asarray(pixel_values),
            pooling_idx=jnp.broadcast_to(jnp.asarray(pooling), (b, *pooling.shape)),
            frame_video_ids=jnp.asarray(frame_video_ids),
            layout=layout or RowLayout(),
        )

    def llm_length(self, cfg: Molmo2Config) -> int:
        """The static length of the sequence the LLM runs on: the layout's `llm_seq_len` (default the input
        length) when the model prunes, else the input length."""
        input_length = self.input_ids.shape[1]
        return (self.layout.llm_seq_len or input_length) if cfg.stts.prunes else input_length


@flax.struct.dataclass
class Forward:
    """What the loss and the generator read of a forward pass.

    tokens: the sequence the logits refer to (compacted if the model pruned); hidden: [batch, seq, dim],
    the LLM's last hidden states; cache: the KV cache written from slot 0, or None; pruned / compacted:
    the two STTS stages' results, None without pruning; out: named intermediates for diagnostics only
    ("connector/tokens", "stts/scores", "vit/block_3", ...).
    """

    tokens: TokenSequence
    hidden: Array
    cache: dict | None
    pruned: PrunedVideo | None
    compacted: CompactedSequence | None
    out: dict

    @property
    def aux_loss(self) -> Array:
        """The STTS auxiliary loss of this batch (0 without a scorer)."""
        if self.pruned is None or self.pruned.aux_sum is None:
            return jnp.zeros(())
        return self.pruned.aux_sum / jnp.maximum(self.pruned.aux_windows, 1)

    @property
    def overflow(self) -> Array | None:
        """[batch] bool: the row overflowed a static STTS buffer or lost placeholders; a training or
        evaluation step must raise on it. None without pruning."""
        if self.pruned is None:
            return None
        c = self.compacted
        return self.pruned.vit_overflow | c.llm_overflow | c.placeholder_mismatch

    def follow(self, per_token: Array) -> Array:
        """A per-token array of the input [batch, input_seq] moved to `tokens`' order (targets, masks)."""
        return per_token if self.compacted is None else gather_tokens(per_token, self.compacted.source_index)


def last_token(segment_ids: Array) -> Array:
    """[batch, seq] -> the slot of each row's last real token [batch] (-1 for an empty row)."""
    return jnp.max(jnp.where(segment_ids != 0, jnp.arange(segment_ids.shape[1]), -1), axis=1)


def placeholder_ranks(input_ids: Array, image_patch_id: int) -> tuple[Array, Array]:
    """is_placeholder [batch, seq] and each placeholder's rank among its row's placeholders."""
    is_placeholder = input_ids == image_patch_id
    return is_placeholder, jnp.cumsum(is_placeholder, axis=1) - 1


class Molmo2(nn.Module):
    """Molmo2ForConditionalGeneration (+ STTS). `__call__(batch)` -> (logits [batch, seq, vocab], Forward).

    With pruning, `seq` is `batch.llm_length(cfg)` and `Forward.tokens` is the
    compacted sequence the logits refer to. Rows the static buffers cannot represent are flagged, never
    dropped silently (`Forward.overflow`).
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

    def prepare(
        self, batch: VideoBatch
    ) -> tuple[TokenSequence, Array, PrunedVideo | None, CompactedSequence | None, dict]:
        """The LLM's tokens and the video tokens to add to their placeholders; with pruning, also what the
        pruned ViT and the placeholder removal report."""
        sequence = TokenSequence(batch.input_ids, batch.segment_ids, batch.positions)
        s = self.cfg.stts
        if not s.prunes:
            video, out = self.encode_video(batch.pixel_values, batch.pooling_idx)
            return sequence, video, None, None, out
        if batch.frame_video_ids is None:
            raise ValueError(f"stts.method={s.method!r} needs VideoBatch.frame_video_ids (the video of each frame).")
        pruned, out = encode_video_pruned(
            self.cfg,
            self.vit,
            self.scorer if s.uses_scorer else None,
            self.pool,
            lambda: self.make_rng("stts"),
            batch.pixel_values,
            batch.frame_video_ids,
            batch.layout.max_videos_per_row,
        )
        compacted = remove_pruned_placeholders(
            self.cfg, sequence, pruned.keep, batch.frame_video_ids, batch.llm_length(self.cfg)
        )
        return compacted.tokens, pruned.tokens, pruned, compacted, out

    def llm(
        self, tokens: TokenSequence, video: Array, cache=None, last_only: bool = False
    ) -> tuple[Array, Array, Array]:
        """Logits of the LLM over `tokens` with the row's k-th `video` token [batch, k, dim] added to its
        k-th placeholder -> (logits [batch, seq, vocab], hidden, cache). `last_only`: the logits after each
        row's last real token only [batch, vocab], the LM head run on those tokens alone (a prefill: at 24k
        tokens and Qwen3's vocabulary the whole sequence's logits would be 14 GiB in float32)."""
        input_ids, segment_ids = tokens.input_ids, tokens.segment_ids
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
        hidden, cache = self.text(embeddings, tokens.positions, segments, cache, 0)
        if last_only:
            return self.lm_head(hidden[jnp.arange(hidden.shape[0]), last_token(segment_ids)]), hidden, cache
        return self.lm_head(hidden), hidden, cache

    def __call__(self, batch: VideoBatch, cache=None) -> tuple[Array, Forward]:
        """Full forward (training, scoring, or prefill into `cache` from slot 0) -> (logits, Forward)."""
        return self._forward(batch, cache, last_only=False)

    def prefill(self, batch: VideoBatch, cache) -> tuple[Array, Forward]:
        """The prompt into `cache` from slot 0 -> (the logits after each row's last real token [batch, vocab],
        Forward), the LM head run on those tokens only."""
        return self._forward(batch, cache, last_only=True)

    def _forward(self, batch: VideoBatch, cache, last_only: bool) -> tuple[Array, Forward]:
        tokens, video, pruned, compacted, out = self.prepare(batch)
        logits, hidden, cache = self.llm(tokens, video, cache, last_only)
        return logits, Forward(tokens=tokens, hidden=hidden, cache=cache, pruned=pruned, compacted=compacted, out=out)

    def decode(self, input_ids: Array, positions: Array, segments: SegmentMask, cache, cache_index):
        """One step of text tokens [batch, 1] written at `cache_index`; returns (logits, cache)."""
        hidden, cache = self.text(self.text.embed_tokens(input_ids), positions, segments, cache, cache_index)
        return self.lm_head(hidden), cache


def param_shapes(cfg: Molmo2Config) -> dict:
    """The params' shapes and dtypes (they do not depend on the batch), without allocating anything."""
    ids = jnp.zeros((1, 4), jnp.int32)
    pixels = jnp.zeros((1, 1, cfg.vision.num_patches, cfg.vision.patch_dim))
    sample = VideoBatch(ids, ids + 1, ids, pixels, ids[:, :1, None], frame_video_ids=ids[:, :1] + 1)
    keys = {"params": jax.random.key(0), "stts": jax.random.key(0)}
    return jax.eval_shape(lambda: Molmo2(cfg).init(keys, sample)["params"])
