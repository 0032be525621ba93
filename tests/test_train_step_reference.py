"""The train step against an independent gradient, and its compiled functions against recompiles.

Gradient accumulation is checked on the raw gradient: with plain SGD at learning rate 1 (no clipping,
no Adam normalisation) the parameter update is exactly minus the gradient, so a wrongly scaled or
wrongly normalised accumulated gradient shows up in the update and in metrics["grad_norm"].

The jitted train step and the sharded train step must not be traced again when only the batch content
changes (generation and scoring: tests/test_evaluate_reference.py, which shares their compilation).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from conftest import stts_batch
from test_train_step import FRAMES, ROWS, SEQ, answer_targets

from stts_jax.models import get_config
from stts_jax.models.config import STTSConfig
from stts_jax.train.sharding import MeshConfig, batch_sharding, make_mesh, state_shardings
from stts_jax.train.step import TrainState, init_state, sharded_train_step, train_step
from stts_jax.vlm.model import Molmo2

# The test's own computations compile with XLA's cheap settings (about half the compile time on CPU);
# the train steps under test compile as they always do.
FAST = {"xla_backend_optimization_level": 0, "xla_llvm_disable_expensive_passes": True}
init = jax.jit(init_state, static_argnums=(0, 1, 3), compiler_options=FAST)  # eager init is slow on CPU
TRACES = {"update": 0}


def _counting_update(updates, state, params=None):
    TRACES["update"] += 1  # Python side effect: runs once per trace of a step that calls it
    return optax.sgd(1.0).update(updates, state, params)


# Plain SGD at learning rate 1: the update is exactly -gradient. Its update function counts the traces
# of the steps that use it; one optimizer object for the whole module, so the steps compile once.
SGD = optax.GradientTransformation(optax.sgd(1.0).init, _counting_update)


LLM_LEN = 72  # the batches' LLM tokens after pruning


def tiny():
    return get_config("tiny", stts=STTSConfig(method="stts", prune_ratio=0.5, layer=1))


def reference_loss(cfg, params, batch, targets):
    """The training objective written out from the model's outputs: mean cross-entropy of the answer
    tokens of the compacted sequence over the whole batch + aux_weight x the scorer's aux loss."""
    logits, forward = Molmo2(cfg).apply({"params": params}, batch, rngs={"stts": jax.random.key(0)})
    index = forward.compacted.source_index  # source slot of each compacted slot; the input length = padding
    moved = jnp.take_along_axis(targets, index, axis=1, mode="fill", fill_value=0)
    ids, seg = forward.tokens.input_ids, forward.tokens.segment_ids
    scored = (moved[:, 1:] > 0) & (seg[:, 1:] == seg[:, :-1]) & (seg[:, 1:] != 0)
    log_p = jax.nn.log_softmax(logits[:, :-1].astype(jnp.float32))
    nll = -jnp.take_along_axis(log_p, ids[:, 1:, None], axis=-1)[..., 0]
    return (nll * scored).sum() / scored.sum() + cfg.stts.aux_weight * forward.aux_loss


@pytest.fixture(scope="module")
def four_rows():
    cfg = tiny()
    # 4 rows; the halves (the micro-batches of accumulate=2) count different frames after a video's first
    # (3 and 6), so a step that averaged the micro-batches' aux-loss means would miss the full batch's mean
    batch = jax.tree.map(
        lambda a, b: jnp.concatenate([a, b]),
        stts_batch(cfg, ROWS, FRAMES, SEQ, llm_seq_len=LLM_LEN),
        stts_batch(cfg, [[4], [4]], FRAMES, SEQ, seed=5, llm_seq_len=LLM_LEN),
    )
    targets = answer_targets(batch)
    params = init(cfg, SGD, batch, 0).params
    return cfg, batch, targets, jax.tree.map(np.asarray, params)


@pytest.fixture(scope="module")
def full_batch_gradient(four_rows):
    """(loss, gradient) of the full batch by jax.grad of `reference_loss`, independent of the train step."""
    cfg, batch, targets, params = four_rows
    loss, grads = jax.jit(jax.value_and_grad(reference_loss, argnums=1), static_argnums=0, compiler_options=FAST)(
        cfg, params, batch, targets
    )
    return float(loss), jax.tree.map(np.asarray, grads)


@pytest.mark.parametrize("accumulate", [2, 1])
def test_train_step_gradient_is_the_full_batch_gradient(four_rows, full_batch_gradient, accumulate):
    """accumulate=2 (two micro-batches of 2 rows, gradients summed) and accumulate=1 (one pass) both
    update by exactly -gradient of the full-batch loss, and report its loss and gradient norm."""
    cfg, batch, targets, params = four_rows
    loss, grads = full_batch_gradient
    assert cfg.stts.effective_aux_weight == cfg.stts.aux_weight == 0.5
    for group in ("scorer", "vit", "connector", "text", "lm_head"):  # every part gets a gradient
        assert float(optax.global_norm(grads[group])) > 0, group
    new, metrics = train_step(cfg, SGD, fresh_state(params), batch, targets, accumulate=accumulate)
    assert int(metrics["rejected"]) == 0 and int(new.step) == 1
    np.testing.assert_allclose(float(metrics["loss"]), loss, rtol=1e-5)
    np.testing.assert_allclose(float(metrics["grad_norm"]), float(optax.global_norm(grads)), rtol=1e-4)
    updates = jax.tree.map(lambda n, o: np.asarray(n) - o, new.params, params)
    for (path, update), g in zip(jax.tree_util.tree_flatten_with_path(updates)[0], jax.tree.leaves(grads), strict=True):
        np.testing.assert_allclose(update, -g, atol=1e-6 + 1e-4 * np.abs(g).max(), err_msg=jax.tree_util.keystr(path))


# Same shapes (4 rows, 4 frame slots, 96 tokens) as `four_rows`, other content: pixels, videos per row,
# frames per video, prompt lengths (the question length is random per seed), answer lengths.
CONTENTS = [
    ([[2, 1], [3], [1, 3], [4]], 1, 2),
    ([[4], [2, 2], [1], [1, 1]], 2, 3),
    ([[3], [1, 2], [2], [2, 1]], 3, 1),
]


def batches(cfg):
    out = []
    for rows, seed, answer in CONTENTS:
        batch = stts_batch(cfg, rows, FRAMES, SEQ, seed=seed, llm_seq_len=LLM_LEN)
        out.append((batch, answer_targets(batch, answer)))
    lengths = {tuple((np.asarray(b.segment_ids) > 0).sum(1).tolist()) for b, _ in out}
    assert len(lengths) == len(out), "the batches differ in prompt lengths"
    return out


def fresh_state(params):
    return TrainState(
        step=jnp.zeros((), jnp.int32),
        params=jax.tree.map(jnp.asarray, params),  # fresh buffers: the step donates its state
        opt_state=SGD.init(params),
        rng=jax.random.key_data(jax.random.key(0)),
    )


@pytest.mark.parametrize("accumulate", [1, 2])
def test_train_step_compiles_once_across_batch_contents(four_rows, accumulate):
    """Chained steps over batches of other content in the same shapes trace and compile nothing new."""
    cfg, batch, targets, params = four_rows
    state = fresh_state(params)
    state, _ = train_step(cfg, SGD, state, batch, targets, accumulate=accumulate)  # compiled here at the latest
    traces, compiled = TRACES["update"], train_step._cache_size()
    seen = set()
    for other, other_targets in batches(cfg):
        state, metrics = train_step(cfg, SGD, state, other, other_targets, accumulate=accumulate)
        seen.add((int(metrics["answer_tokens"]), int(metrics["llm_tokens"])))
    assert TRACES["update"] == traces, f"train_step traced again ({TRACES['update'] - traces}x) for new content"
    assert train_step._cache_size() == compiled
    assert len(seen) == len(CONTENTS)  # the step saw the new content


def test_sharded_train_step_compiles_once_across_batch_contents(four_rows):
    """The mesh-compiled step (1-device mesh, state donated) traces once for four batches of other content."""
    cfg, batch, targets, params = four_rows
    mesh = make_mesh(MeshConfig(), jax.devices()[:1])
    rows = batch_sharding(mesh, 4)
    shardings = state_shardings(jax.eval_shape(lambda: fresh_state(params)), mesh)
    state = jax.device_put(fresh_state(params), shardings)
    step = sharded_train_step(cfg, SGD, shardings, rows)
    traces, seen = TRACES["update"], set()
    for b, t in [(batch, targets), *batches(cfg)]:
        state, metrics = step(state, jax.device_put(b, rows), jax.device_put(t, rows))
        seen.add((int(metrics["answer_tokens"]), int(metrics["llm_tokens"])))
    assert len(seen) == 1 + len(CONTENTS)
    assert TRACES["update"] == traces + 1, f"the sharded step traced {TRACES['update'] - traces}x for 4 batches"
    assert step._cache_size() == 1
