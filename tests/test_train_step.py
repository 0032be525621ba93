"""Optimizer groups, the answer loss, and the train step (learning, freezing, rejecting NaN)."""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import stts_batch

from stts_jax.models import get_config
from stts_jax.models.config import STTSConfig
from stts_jax.train.loss import answer_cross_entropy, combine_metrics
from stts_jax.train.optimizer import OptimizerConfig, make_optimizer, param_groups, param_path
from stts_jax.train.step import init_state, train_step
from stts_jax.vlm.model import param_shapes

ROWS, FRAMES, SEQ = [[2, 1], [3]], 4, 96


def answer_targets(batch, count=3):
    """1 on the last `count` tokens of every example (where its answer would be)."""
    seg = np.asarray(batch.segment_ids)
    targets = np.zeros_like(seg)
    for r in range(len(seg)):
        for s in set(seg[r][seg[r] > 0].tolist()):
            targets[r, np.flatnonzero(seg[r] == s)[-count:]] = 1
    return jnp.asarray(targets)


def setup(method="stts", lr_scale=1.0, **optimizer_changes):
    cfg = get_config("tiny", stts=STTSConfig(method=method, prune_ratio=0.5, layer=1))
    batch = stts_batch(cfg, ROWS, FRAMES, SEQ, llm_seq_len=72)
    rates = tuple((p, lr * lr_scale) for p, lr in OptimizerConfig().learning_rates)
    opt_cfg = OptimizerConfig(learning_rates=rates, warmup_steps=1, total_steps=50, **optimizer_changes)
    optimizer = make_optimizer(opt_cfg, param_shapes(cfg))
    return cfg, batch, optimizer, init_state(cfg, optimizer, batch, 0)


def test_parameter_groups_follow_the_paper():
    cfg, batch, _, state = setup()
    labels = param_groups(state.params, OptimizerConfig())
    by_group = {}
    for path, label in jax.tree_util.tree_flatten_with_path(labels)[0]:
        by_group.setdefault(label, set()).add(param_path(path).split("/")[0])
    assert by_group == {"0": {"scorer"}, "1": {"vit"}, "2": {"connector"}, "3": {"text", "lm_head"}}
    with pytest.raises(ValueError, match="matches no learning-rate rule"):
        param_groups(state.params, OptimizerConfig(learning_rates=(("vit/.*", 1.0),)))


def test_answer_loss_counts_only_answer_tokens_of_the_same_example():
    logits = jnp.zeros((1, 5, 7)).at[0, 1, 3].set(10.0)
    ids = jnp.asarray([[1, 2, 3, 4, 5]])
    targets = jnp.asarray([[0, 0, 1, 1, 1]])
    segments = jnp.asarray([[1, 1, 1, 2, 2]])  # token 3 starts example 2: not predicted from example 1
    loss, metrics = answer_cross_entropy(logits, ids, targets, segments)
    assert int(metrics["answer_tokens"]) == 2  # tokens 2 and 4
    expected = ((jax.nn.logsumexp(logits[0, 1]) - 10.0) + jnp.log(7.0)) / 2
    np.testing.assert_allclose(loss, expected, rtol=1e-6)


@pytest.mark.parametrize("method", ["stts", "none"])
def test_steps_learn_and_targets_follow_pruning(method):
    cfg, batch, optimizer, state = setup(method, lr_scale=300.0)
    targets = answer_targets(batch)
    losses = []
    for _ in range(12):
        state, metrics = train_step(cfg, optimizer, state, batch, targets)
        losses.append(float(metrics["loss"]))
        assert int(metrics["rejected"]) == 0
        # answers are never pruned: every answer token of the input is a target of the compacted sequence
        assert int(metrics["answer_tokens"]) == int(targets.sum())
    assert losses[-1] < 0.7 * losses[0], losses
    if method == "stts":
        assert 0.5 < float(metrics["kept_window_ratio"]) < 1.0 and int(metrics["overflow_rows"]) == 0


def test_frozen_parameters_do_not_move():
    cfg, batch, optimizer, state = setup(lr_scale=100.0, freeze=("vit/.*",))
    before = jax.tree.map(np.asarray, state.params)
    for _ in range(2):  # the warm-up starts at learning rate 0
        state, _ = train_step(cfg, optimizer, state, batch, answer_targets(batch))
    after = jax.tree.map(np.asarray, state.params)
    assert all(
        (a == b).all() for a, b in zip(jax.tree.leaves(before["vit"]), jax.tree.leaves(after["vit"]), strict=True)
    )
    assert any(
        (a != b).any() for a, b in zip(jax.tree.leaves(before["scorer"]), jax.tree.leaves(after["scorer"]), strict=True)
    )


def test_non_finite_loss_rejects_the_step_and_keeps_the_state():
    cfg, batch, optimizer, state = setup()
    before = jax.tree.map(np.asarray, (state.params, state.opt_state))
    poisoned = dataclasses.replace(batch, pixel_values=batch.pixel_values.at[0, 0, 0, 0].set(jnp.nan))
    state, metrics = train_step(cfg, optimizer, state, poisoned, answer_targets(batch))
    assert int(metrics["rejected"]) == 1 and int(state.step) == 1  # the batch counts, the update does not
    after = jax.tree.map(np.asarray, (state.params, state.opt_state))
    for a, b in zip(jax.tree.leaves(before), jax.tree.leaves(after), strict=True):
        np.testing.assert_array_equal(a, b)


@pytest.mark.slow  # ~50 s; in the default run test_train_step_reference checks accumulation's raw gradients
def test_gradient_accumulation_gives_the_same_update():
    cfg, batch, optimizer, state = setup(lr_scale=100.0)
    batch = jax.tree.map(lambda x: jnp.concatenate([x, x[::-1]]), batch)  # 4 rows
    targets = answer_targets(batch)
    results = []
    for accumulate in (1, 2):
        s = init_state(cfg, optimizer, batch, 0)
        for _ in range(2):
            s, metrics = train_step(cfg, optimizer, s, batch, targets, accumulate=accumulate)
        results.append((float(metrics["loss"]), jax.tree.map(np.asarray, s.params)))
    np.testing.assert_allclose(results[0][0], results[1][0], rtol=1e-5)
    for a, b in zip(jax.tree.leaves(results[0][1]), jax.tree.leaves(results[1][1]), strict=True):
        np.testing.assert_allclose(a, b, atol=1e-5 + 1e-4 * np.abs(a).max())


def test_unpruned_runs_combine_their_metrics_like_pruned_ones():
    """Micro-batches (accumulation) and validation batches of a model without a scorer combine by the same
    table as STTS's: the aux loss is 0 over 0 windows, not a missing weight."""
    cfg, batch, optimizer, state = setup("none")
    batch = jax.tree.map(lambda x: jnp.concatenate([x, x[::-1]]), batch)  # 4 rows
    _, metrics = train_step(cfg, optimizer, state, batch, answer_targets(batch), accumulate=2)
    assert float(metrics["aux_loss"]) == 0.0 and int(metrics["aux_windows"]) == 0
    stacked = {k: jnp.stack([v, v]) for k, v in metrics.items()}
    combined = combine_metrics(stacked)
    assert int(combined["answer_tokens"]) == 2 * int(metrics["answer_tokens"])
    np.testing.assert_allclose(float(combined["answer_loss"]), float(metrics["answer_loss"]), rtol=1e-6)


def test_group_sizes_count_every_parameter_once():
    """Per-group counts against a hand count of the same tree: the first matching rule wins, frozen apart."""
    from stts_jax.train.optimizer import group_sizes

    params = {
        "scorer": {"w": np.zeros((3, 4))},
        "vit": {"a": np.zeros((5,)), "b": np.zeros((2, 2))},
        "text": {"e": np.zeros((7,))},
    }
    cfg = OptimizerConfig(freeze=("vit/b",))
    assert group_sizes(params, cfg) == {
        "scorer/.*": 12,
        "vit/.*": 5,
        "connector/.*": 0,
        "(text|lm_head)/.*": 7,
        "frozen": 4,
    }
