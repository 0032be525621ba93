"""Greedy decoding with the KV cache: one prefill over the prompt, then one token per step, in one jit."""

from __future__ import annotations

import functools
from typing import Any

import jax
import jax.numpy as jnp

from stts_jax.models.attention import SegmentMask
from stts_jax.models.config import Molmo2Config
from stts_jax.models.llm import init_cache
from stts_jax.vlm.model import Molmo2, VideoBatch, last_token

Array = jax.Array


def _prefill(cfg: Molmo2Config, params, batch: VideoBatch, new_slots: int) -> dict:
    """The prompt through the model into a cache with `new_slots` free slots after it."""
    model = Molmo2(cfg)
    b = batch.input_ids.shape[0]
    s = batch.llm_length(cfg)
    cache = init_cache(cfg, b, s + new_slots)
    logits, forward = model.apply(
        {"params": params}, batch, cache, rngs={"stts": jax.random.key(0)}, method=Molmo2.prefill
    )
    segment_ids, positions = forward.tokens.segment_ids, forward.tokens.positions  # after pruning, if any
    last = last_token(segment_ids)
    rows = jnp.arange(b)
    return {
        "cache": forward.cache,
        "logits": logits,  # [batch, vocab] after the last prompt token
        "position": positions[rows, last],
        "segment": segment_ids[rows, last],
        "kv_segments": jnp.pad(segment_ids, ((0, 0), (0, new_slots))),
        "prompt_slots": s,
    }


def _decode(cfg: Molmo2Config, params, state: dict, cache, kv_segments, token: Array, i) -> tuple[Array, Any, Array]:
    """Token [batch] as the i-th new token (cache slot prompt_slots + i) -> (logits [batch, vocab], cache,
    kv_segments)."""
    b, length = kv_segments.shape
    slot = state["prompt_slots"] + i
    kv_segments = kv_segments.at[:, slot].set(state["segment"])
    slots = jnp.broadcast_to(jnp.arange(length, dtype=jnp.int32), (b, length))
    segments = SegmentMask(
        state["segment"][:, None], kv_segments, jnp.full((b, 1), slot, jnp.int32), slots, causal=True
    )
    logits, cache = Molmo2(cfg).apply(
        {"params": params},
        token[:, None],
        (state["position"] + 1 + i)[:, None],
        segments,
        cache,
        slot,
        method=Molmo2.decode,
    )
    return logits[:, 0], cache, kv_segments


def _greedy(cfg: Molmo2Config, params, state: dict, max_new_tokens: int) -> Array:
    """Greedy continuations [batch, max_new_tokens] from a prefill state."""

    def step(i, carry):
        cache, kv_segments, token, tokens = carry
        tokens = tokens.at[:, i].set(token)
        logits, cache, kv_segments = _decode(cfg, params, state, cache, kv_segments, token, i)
        return cache, kv_segments, jnp.argmax(logits, axis=-1).astype(jnp.int32), tokens

    first = jnp.argmax(state["logits"], axis=-1).astype(jnp.int32)
    tokens = jnp.zeros((first.shape[0], max_new_tokens), jnp.int32)
    return jax.lax.fori_loop(0, max_new_tokens, step, (state["cache"], state["kv_segments"], first, tokens))[3]


@functools.partial(jax.jit, static_argnames=("cfg", "max_new_tokens", "prompt_logits"))
def greedy_generate(
    cfg: Molmo2Config, params, batch: VideoBatch, max_new_tokens: int, prompt_logits: bool = False
) -> Array | tuple[Array, Array]:
    """The `max_new_tokens` greedy continuations [batch, max_new_tokens] of each row's prompt, and with
    `prompt_logits` also the logits [batch, vocab] after each row's last prompt token (the first step).

    One example per row; rows may be padded on either side (segment id 0). New tokens go to cache
    slots after the prompt and continue the row's positions from its last real token.
    """
    state = _prefill(cfg, params, batch, max_new_tokens)
    tokens = _greedy(cfg, params, state, max_new_tokens)
    return (tokens, state["logits"]) if prompt_logits else tokens


@functools.partial(jax.jit, static_argnames=("cfg", "max_new_tokens"))
def generate_and_score(
    cfg: Molmo2Config, params, batch: VideoBatch, options: Array, max_new_tokens: int
) -> tuple[Array, Array]:
    """Greedy continuations [batch, max_new_tokens] and the log-likelihood [batch, K] of each of K
    candidate continuations `options` [batch, K, L] (token ids, 0 = past its end), all from one prefill.

    A candidate's score is the sum of log p(token) over its tokens, teacher-forced through the cache.
    """
    length = options.shape[2]
    state = _prefill(cfg, params, batch, max(max_new_tokens, length))
    tokens = _greedy(cfg, params, state, max_new_tokens)

    def option_score(option):  # [batch, L]
        def step(i, carry):
            cache, kv_segments, logits, total = carry
            token = option[:, i]
            log_p = jnp.take_along_axis(jax.nn.log_softmax(logits.astype(jnp.float32)), token[:, None], 1)[:, 0]
            total = total + jnp.where(token > 0, log_p, 0.0)
            logits, cache, kv_segments = _decode(cfg, params, state, cache, kv_segments, token, i)
            return cache, kv_segments, logits, total

        total = jnp.zeros(option.shape[0], jnp.float32)
        carry = (state["cache"], state["kv_segments"], state["logits"], total)
        return jax.lax.fori_loop(0, length, step, carry)[3]

    return tokens, jax.lax.map(option_score, jnp.moveaxis(options, 1, 0)).T
