"""The Molmo2 video VLM: ViT -> connector -> tokens added to placeholder embeddings -> LLM -> logits."""

from __future__ import annotations

import flax.linen as nn
import flax.struct
import jax
import jax.numpy as jnp

from stts_jax.models.attention import SegmentMask
from stts_jax.models.config import Molmo2Config
from stts_jax.models.connector import Connector
from stts_jax.models.layers import dtypes
from stts_jax.models.llm import TextModel
from stts_jax.models.vit import VisionTransformer

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
    """

    input_ids: Array
    segment_ids: Array
    positions: Array
    pixel_values: Array
    pooling_idx: Array


def placeholder_ranks(input_ids: Array, image_patch_id: int) -> tuple[Array, Array]:
    """is_placeholder [batch, seq] and each placeholder's rank among its row's placeholders."""
    is_placeholder = input_ids == image_patch_id
    return is_placeholder, jnp.cumsum(is_placeholder, axis=1) - 1


class Molmo2(nn.Module):
    """Molmo2ForConditionalGeneration. `__call__(batch)` -> (logits [batch, seq, vocab], out)."""

    cfg: Molmo2Config

    def setup(self):
        self.vit = VisionTransformer(self.cfg)
        self.connector = Connector(self.cfg)
        self.text = TextModel(self.cfg)
        self.lm_head = nn.Dense(self.cfg.text.vocab_size, use_bias=False, **dtypes(self.cfg))

    def encode_video(self, pixel_values: Array, pooling_idx: Array) -> tuple[Array, dict[str, Array]]:
        """[batch, frames, patches, patch_dim] + [batch, windows, window] -> tokens [batch, windows, dim]."""
        b, f, n, p = pixel_values.shape
        features, out = self.vit(pixel_values.reshape(b * f, n, p))
        row_offset = (jnp.arange(b, dtype=pooling_idx.dtype) * f * n)[:, None, None]
        flat_idx = jnp.where(pooling_idx >= 0, pooling_idx + row_offset, -1).reshape(b * pooling_idx.shape[1], -1)
        tokens, conn_out = self.connector(features, flat_idx)
        out.update({f"connector/{k}": v.reshape(b, -1) for k, v in conn_out.items()})
        out["connector/tokens"] = tokens.reshape(b, pooling_idx.shape[1], -1)
        return out["connector/tokens"], out

    def embed(self, batch: VideoBatch) -> tuple[Array, dict[str, Array]]:
        """Token embeddings with each row's k-th video token added to its k-th placeholder."""
        tokens, out = self.encode_video(batch.pixel_values, batch.pooling_idx)
        embeddings = self.text.embed_tokens(batch.input_ids)
        is_placeholder, rank = placeholder_ranks(batch.input_ids, self.cfg.image_patch_id)
        rank = jnp.clip(rank, 0, tokens.shape[1] - 1)
        video = jnp.take_along_axis(tokens, rank[..., None], axis=1)
        embeddings = embeddings + jnp.where(is_placeholder[..., None], video, 0).astype(embeddings.dtype)
        return embeddings, out

    def vision_block_ids(self, input_ids: Array, segment_ids: Array) -> Array:
        """Vision tokens of an example form one bidirectional block, identified by the segment id."""
        is_vision = jnp.isin(input_ids, jnp.asarray(self.cfg.vision_token_ids))
        return jnp.where(is_vision, segment_ids, 0)

    def __call__(self, batch: VideoBatch, cache=None) -> tuple[Array, dict]:
        """Full forward (training, scoring, or prefill into `cache` from slot 0)."""
        embeddings, out = self.embed(batch)
        blocks = self.vision_block_ids(batch.input_ids, batch.segment_ids)
        if cache is None:
            segments = SegmentMask.self_attention(batch.segment_ids, blocks)
        else:
            pad = cache["k"].shape[2] - batch.input_ids.shape[1]
            widen = lambda x: jnp.pad(x, ((0, 0), (0, pad)))
            slots = jnp.broadcast_to(jnp.arange(cache["k"].shape[2], dtype=jnp.int32), widen(blocks).shape)
            segments = SegmentMask(
                batch.segment_ids,
                widen(batch.segment_ids),
                slots[:, : blocks.shape[1]],
                slots,
                blocks,
                widen(blocks),
            )
        hidden, cache = self.text(embeddings, batch.positions, segments, cache, 0)
        out["llm/hidden"] = hidden
        out["cache"] = cache
        return self.lm_head(hidden), out

    def decode(self, input_ids: Array, positions: Array, segments: SegmentMask, cache, cache_index):
        """One step of text tokens [batch, 1] written at `cache_index`; returns (logits, cache)."""
        hidden, cache = self.text(self.text.embed_tokens(input_ids), positions, segments, cache, cache_index)
        return self.lm_head(hidden), cache
