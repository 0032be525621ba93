"""The train step: loss, gradients, AdamW update; a step with a non-finite loss or gradient is rejected."""

from __future__ import annotations

import functools

import flax.struct
import jax
import jax.numpy as jnp
import optax
from jax.sharding import NamedSharding, PartitionSpec

from stts_jax.models.config import Molmo2Config
from stts_jax.models.vlm import Molmo2, VideoBatch
from stts_jax.train.loss import training_loss

Array = jax.Array


@flax.struct.dataclass
class TrainState:
    step: Array
    params: dict
    opt_state: optax.OptState
    rng: Array  # raw uint32 key data (checkpointable), see jax.random.key_data


def init_state(cfg: Molmo2Config, optimizer: optax.GradientTransformation, batch: VideoBatch, seed: int) -> TrainState:
    rng, init_rng, stts_rng = jax.random.split(jax.random.key(seed), 3)
    params = Molmo2(cfg).init({"params": init_rng, "stts": stts_rng}, batch)["params"]
    return TrainState(jnp.zeros((), jnp.int32), params, optimizer.init(params), jax.random.key_data(rng))


def _train_step(
    cfg: Molmo2Config, optimizer: optax.GradientTransformation, state: TrainState, batch: VideoBatch, targets: Array
) -> tuple[TrainState, dict]:
    """One update. metrics["rejected"] is 1 when the loss or the gradient norm is not finite: the state
    (params, optimizer, step) is then returned unchanged, so a NaN never reaches a checkpoint."""
    rng, step_rng = jax.random.split(jax.random.wrap_key_data(state.rng))

    def loss_fn(params):
        logits, out = Molmo2(cfg).apply({"params": params}, batch, rngs={"stts": step_rng})
        return training_loss(logits, out, batch, targets, cfg.stts.effective_aux_weight)

    (loss, metrics), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
    updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    grad_norm = optax.global_norm(grads)
    ok = jnp.isfinite(loss) & jnp.isfinite(grad_norm)
    keep = lambda new, old: jax.tree.map(lambda n, o: jnp.where(ok, n, o), new, old)
    new_state = TrainState(
        step=state.step + ok.astype(jnp.int32),
        params=keep(params, state.params),
        opt_state=keep(opt_state, state.opt_state),
        rng=jax.random.key_data(rng),
    )
    metrics.update({"loss": loss, "grad_norm": grad_norm, "rejected": (~ok).astype(jnp.int32)})
    return new_state, metrics


train_step = jax.jit(_train_step, static_argnames=("cfg", "optimizer"), donate_argnames=("state",))


def sharded_train_step(cfg: Molmo2Config, optimizer: optax.GradientTransformation, state_sharding, batch_sharding):
    """`train_step` compiled for a mesh: state and batch in their shardings, state donated, metrics replicated."""
    replicated = NamedSharding(batch_sharding.mesh, PartitionSpec())
    return jax.jit(
        functools.partial(_train_step, cfg, optimizer),
        in_shardings=(state_sharding, batch_sharding, batch_sharding),
        out_shardings=(state_sharding, replicated),
        donate_argnums=(0,),
    )


def sharded_init(cfg: Molmo2Config, optimizer: optax.GradientTransformation, batch: VideoBatch, seed: int, shardings):
    """The initial TrainState created directly in `shardings`: nothing is materialised unsharded."""
    return jax.jit(functools.partial(init_state, cfg, optimizer, seed=seed), out_shardings=shardings)(batch)
