"""Greedy decoding with the KV cache: one prefill over the prompt, then one token per step, in one jit."""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

from stts_jax.models.attention import SegmentMask
from stts_jax.models.config import Molmo2Config
from stts_jax.models.llm import init_cache
from stts_jax.models.vlm import Molmo2, VideoBatch

Array = jax.Array


@functools.partial(jax.jit, static_argnames=("cfg", "max_new_tokens", "prompt_logits"))
def greedy_generate(
    cfg: Molmo2Config, params, batch: VideoBatch, max_new_tokens: int, prompt_logits: bool = False
) -> Array | tuple[Array, Array]:
    """The `max_new_tokens` greedy continuations [batch, max_new_tokens] of each row's prompt, and with
    `prompt_logits` also the logits [batch, vocab] after each row's last prompt token (the first step).

    One example per row; rows may be padded on either side (segment id 0). New tokens go to cache
    slots after the prompt and continue the row's positions from its last real token.
    """
    model = Molmo2(cfg)
    b = batch.input_ids.shape[0]
    s = (cfg.stts.llm_seq_len or batch.input_ids.shape[1]) if cfg.stts.prunes else batch.input_ids.shape[1]
    length = s + max_new_tokens
    cache = init_cache(cfg, b, length)
    logits, out = model.apply({"params": params}, batch, cache, rngs={"stts": jax.random.key(0)})
    segment_ids, positions = out["llm/segment_ids"], out["llm/positions"]  # after pruning, if any
    last = jnp.max(jnp.where(segment_ids != 0, jnp.arange(s), -1), axis=1)
    rows = jnp.arange(b)
    token = jnp.argmax(logits[rows, last], axis=-1).astype(jnp.int32)
    position = positions[rows, last]
    segment = segment_ids[rows, last]
    kv_segments = jnp.pad(segment_ids, ((0, 0), (0, max_new_tokens)))
    slots = jnp.broadcast_to(jnp.arange(length, dtype=jnp.int32), (b, length))

    def step(i, state):
        cache, kv_segments, token, tokens = state
        tokens = tokens.at[:, i].set(token)
        slot = s + i
        kv_segments = kv_segments.at[:, slot].set(segment)
        segments = SegmentMask(segment[:, None], kv_segments, jnp.full((b, 1), slot, jnp.int32), slots, causal=True)
        logits, cache = model.apply(
            {"params": params},
            token[:, None],
            (position + 1 + i)[:, None],
            segments,
            cache,
            slot,
            method=Molmo2.decode,
        )
        return cache, kv_segments, jnp.argmax(logits[:, 0], axis=-1).astype(jnp.int32), tokens

    tokens = jnp.zeros((b, max_new_tokens), jnp.int32)
    *_, tokens = jax.lax.fori_loop(0, max_new_tokens, step, (out["cache"], kv_segments, token, tokens))
    return (tokens, logits[rows, last]) if prompt_logits else tokens
