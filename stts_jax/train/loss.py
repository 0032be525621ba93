"""The training objective: cross-entropy on answer tokens + weight x the STTS auxiliary loss."""

from __future__ import annotations

import jax
import jax.numpy as jnp

from stts_jax.vlm.model import Forward

# How metrics of several micro-batches or batches combine: counts add up, a ratio is weighted by the count
# it is a ratio of, any other metric is averaged.
COUNT_METRICS = ("answer_tokens", "answer_examples", "llm_tokens", "overflow_rows", "aux_windows")
RATIO_METRICS = {
    "answer_loss": "answer_tokens",
    "aux_loss": "aux_windows",
    "answer_token_accuracy": "answer_tokens",
    "answer_accuracy": "answer_examples",
}


def combine_metrics(parts: dict) -> dict:
    """Metrics stacked on a leading axis (one entry per micro-batch or batch) -> the whole's metrics."""
    combined = {}
    for name, values in parts.items():
        if name in COUNT_METRICS:
            combined[name] = values.sum()
        elif name in RATIO_METRICS:
            weight = parts[RATIO_METRICS[name]]
            combined[name] = (values * weight).sum() / jnp.maximum(weight.sum(), 1)
        else:
            combined[name] = values.mean()
    return combined


def answer_target_mask(targets, segment_ids):
    """[batch, seq - 1] bool: position i's prediction of token i + 1 is scored (an answer token that
    continues the same example). Pruning never changes it: it only removes placeholders."""
    return (targets[:, 1:] > 0) & (segment_ids[:, 1:] == segment_ids[:, :-1]) & (segment_ids[:, 1:] != 0)


def answer_cross_entropy(logits, input_ids, targets, segment_ids, normalizer=None):
    """Next-token cross-entropy where the *predicted* token is an answer token of the same example.

    logits: [batch, seq, vocab]; input_ids / targets / segment_ids: [batch, seq], targets 1 on answer
    tokens. Normalised by the number of real target tokens (0 if there are none), or by `normalizer`
    (the count over a whole batch, when this is one of its gradient-accumulation micro-batches).
    Returns (loss, metrics); metrics["answer_loss"] is this (micro-)batch's own mean, so that micro-batches
    and batches combine by `combine_metrics`.
    """
    logits = logits[:, :-1].astype(jnp.float32)
    labels = input_ids[:, 1:]
    mask = answer_target_mask(targets, segment_ids)
    ce = jax.nn.logsumexp(logits, -1) - jnp.take_along_axis(logits, labels[..., None], -1)[..., 0]
    count = mask.sum()
    correct = (jnp.argmax(logits, -1) == labels) & mask
    denominator = jnp.maximum(count, 1)
    answered, right = example_accuracy(mask, correct, segment_ids[:, 1:])
    total = (ce * mask).sum()
    return total / (denominator if normalizer is None else normalizer), {
        "answer_loss": total / denominator,
        "answer_tokens": count,
        "answer_token_accuracy": correct.sum() / denominator,
        "answer_examples": answered,
        "answer_accuracy": right / jnp.maximum(answered, 1),
    }


def example_accuracy(mask, correct, segment_ids):
    """(examples with answer tokens, examples whose every answer token is predicted right).

    mask / correct / segment_ids: [batch, n]; an example is a (row, segment id) pair."""
    rows, n = mask.shape
    example = (jnp.arange(rows)[:, None] * n + segment_ids).reshape(-1)
    has_answer = jax.ops.segment_max(mask.reshape(-1).astype(jnp.int32), example, rows * n)
    any_wrong = jax.ops.segment_max((mask & ~correct).reshape(-1).astype(jnp.int32), example, rows * n)
    return (has_answer > 0).sum(), ((has_answer > 0) & (any_wrong <= 0)).sum()


def training_loss(logits, forward: Forward, batch, targets, aux_weight: float, normalizer=None, aux_normalizer=None):
    """Loss on the sequence the LLM ran on (compacted if the model pruned) + aux_weight x aux loss. With
    `normalizer` / `aux_normalizer` (a whole batch's answer tokens / aux windows) this is one micro-batch's
    share of the batch's loss, so that the micro-batches' losses and gradients add up to the batch's."""
    tokens = forward.tokens
    ce, metrics = answer_cross_entropy(
        logits, tokens.input_ids, forward.follow(targets), tokens.segment_ids, normalizer
    )
    aux = forward.aux_loss
    metrics.update({"aux_loss": aux, "llm_tokens": (tokens.segment_ids > 0).sum()})
    scored = forward.pruned is not None and forward.pruned.aux_sum is not None
    # every run reports the same metrics (0 windows without a scorer), so that they combine alike
    metrics["aux_windows"] = forward.pruned.aux_windows if scored else jnp.zeros((), jnp.int32)
    if scored and aux_normalizer is not None:
        aux = forward.pruned.aux_sum / aux_normalizer
    if forward.pruned is not None:
        keep = forward.pruned.keep
        real = batch.frame_video_ids > 0
        metrics["kept_window_ratio"] = keep.sum() / jnp.maximum(real.sum() * keep.shape[2], 1)
        metrics["overflow_rows"] = forward.overflow.sum()
    return ce + aux_weight * aux, metrics
