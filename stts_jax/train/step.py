"""The train step: loss, gradients, AdamW update; a step with a non-finite loss or gradient is rejected.
Also the step's model FLOPs, counted by XLA, for MFU."""

from __future__ import annotations

import functools

import flax.struct
import jax
import jax.numpy as jnp
import optax
from jax.sharding import NamedSharding, PartitionSpec

from stts_jax.models.config import Molmo2Config
from stts_jax.stts.method import aux_windows
from stts_jax.train.loss import answer_target_mask, combine_metrics, training_loss
from stts_jax.vlm.model import Molmo2, VideoBatch
from stts_jax.windows import windows_per_frame

Array = jax.Array


@flax.struct.dataclass
class TrainState:
    step: Array  # batches consumed, rejected ones included (the optimizer's own count follows updates)
    params: dict
    opt_state: optax.OptState
    rng: Array  # raw uint32 key data (checkpointable), see jax.random.key_data


def init_state(cfg: Molmo2Config, optimizer: optax.GradientTransformation, batch: VideoBatch, seed: int) -> TrainState:
    rng, init_rng, stts_rng = jax.random.split(jax.random.key(seed), 3)
    params = Molmo2(cfg).init({"params": init_rng, "stts": stts_rng}, batch)["params"]
    return TrainState(jnp.zeros((), jnp.int32), params, optimizer.init(params), jax.random.key_data(rng))


def _train_step(
    cfg: Molmo2Config,
    optimizer: optax.GradientTransformation,
    state: TrainState,
    batch: VideoBatch,
    targets: Array,
    accumulate: int = 1,
) -> tuple[TrainState, dict]:
    """One update over `batch`, as `accumulate` micro-batches of its rows whose gradients are summed
    (the answer loss and the aux loss are normalised by the whole batch's target tokens and aux windows, so
    the update is the same).
    metrics["rejected"] is 1 when the loss or the gradient norm is not finite: params and optimizer state
    are then returned unchanged, so a NaN never reaches a checkpoint; the step still counts the batch, so
    the host knows the step number without waiting for the device."""
    rng, step_rng = jax.random.split(jax.random.wrap_key_data(state.rng))
    normalizer = jnp.maximum(answer_target_mask(targets, batch.segment_ids).sum(), 1)
    aux_normalizer = (
        jnp.maximum(aux_windows(batch.frame_video_ids, windows_per_frame(cfg)), 1) if cfg.stts.uses_scorer else None
    )

    def micro_grads(micro):
        micro_batch, micro_targets, micro_rng = micro

        def loss_fn(params):
            logits, out = Molmo2(cfg).apply({"params": params}, micro_batch, rngs={"stts": micro_rng})
            return training_loss(
                logits, out, micro_batch, micro_targets, cfg.stts.effective_aux_weight, normalizer, aux_normalizer
            )

        return jax.value_and_grad(loss_fn, has_aux=True)(state.params)

    split = lambda x: x.reshape(accumulate, x.shape[0] // accumulate, *x.shape[1:])
    micros = (jax.tree.map(split, batch), split(targets), jax.random.split(step_rng, accumulate))
    if accumulate == 1:
        (loss, metrics), grads = micro_grads(jax.tree.map(lambda x: x[0], micros))
    else:
        (losses, all_metrics), all_grads = jax.lax.map(micro_grads, micros)
        loss, grads = losses.sum(), jax.tree.map(lambda g: g.sum(0), all_grads)
        metrics = combine_metrics(all_metrics)
    updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    grad_norm = optax.global_norm(grads)
    ok = jnp.isfinite(loss) & jnp.isfinite(grad_norm)
    keep = lambda new, old: jax.tree.map(lambda n, o: jnp.where(ok, n, o), new, old)
    new_state = TrainState(
        step=state.step + 1,
        params=keep(params, state.params),
        opt_state=keep(opt_state, state.opt_state),
        rng=jax.random.key_data(rng),
    )
    metrics.update({"loss": loss, "grad_norm": grad_norm, "rejected": (~ok).astype(jnp.int32)})
    return new_state, metrics


train_step = jax.jit(_train_step, static_argnames=("cfg", "optimizer", "accumulate"), donate_argnames=("state",))


def sharded_train_step(
    cfg: Molmo2Config, optimizer: optax.GradientTransformation, state_sharding, batch_sharding, accumulate: int = 1
):
    """`train_step` compiled for a mesh: state and batch in their shardings, state donated, metrics replicated.

    Traced under the mesh, so that Pallas attention kernels (which XLA cannot partition) run per shard."""
    mesh = batch_sharding.mesh
    replicated = NamedSharding(mesh, PartitionSpec())
    step = functools.partial(_train_step, cfg, optimizer, accumulate=accumulate)

    def step_on_mesh(state: TrainState, batch: VideoBatch, targets: Array) -> tuple[TrainState, dict]:
        with jax.sharding.use_abstract_mesh(mesh.abstract_mesh):
            return step(state, batch, targets)

    return jax.jit(
        step_on_mesh,
        in_shardings=(state_sharding, batch_sharding, batch_sharding),
        out_shardings=(state_sharding, replicated),
        donate_argnums=(0,),
    )


def _eval_step(cfg: Molmo2Config, params: dict, batch: VideoBatch, targets: Array, rng: Array) -> tuple[dict, dict]:
    """Validation metrics of one batch (no update), and what the pruning chose: {"scores", "keep"}
    [batch, frames, windows] (empty without pruning). `rng` is raw key data (random pruning draws from it)."""
    logits, out = Molmo2(cfg).apply({"params": params}, batch, rngs={"stts": jax.random.wrap_key_data(rng)})
    _, metrics = training_loss(logits, out, batch, targets, cfg.stts.effective_aux_weight)
    chosen = {"scores": out.out["stts/scores"], "keep": out.pruned.keep} if out.pruned is not None else {}
    return metrics, chosen


def sharded_eval_step(cfg: Molmo2Config, params_sharding, batch_sharding):
    replicated = NamedSharding(batch_sharding.mesh, PartitionSpec())
    return jax.jit(
        functools.partial(_eval_step, cfg),
        in_shardings=(params_sharding, batch_sharding, batch_sharding, replicated),
        out_shardings=replicated,
    )


def sharded_init(cfg: Molmo2Config, optimizer: optax.GradientTransformation, batch: VideoBatch, seed: int, shardings):
    """The initial TrainState created directly in `shardings`: nothing is materialised unsharded."""
    return jax.jit(functools.partial(init_state, cfg, optimizer, seed=seed), out_shardings=shardings)(batch)


def flops_twin(cfg: Molmo2Config) -> Molmo2Config:
    """The model as its FLOPs are counted: layers unrolled (XLA's cost analysis counts a scanned body once),
    attention on the XLA path (a Pallas or cuDNN kernel is opaque to the count) and no rematerialisation
    (recomputation is not the model's work)."""
    return cfg.replace(scan_layers=False, attention_impl="xla", remat_policy="none")


def lowered_flops(fn, *args) -> float:
    """XLA's cost analysis of the jitted `fn` lowered (not compiled: nothing is allocated) on the shapes of
    `args` (arrays or `jax.ShapeDtypeStruct`s)."""
    shapes = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), args)
    return float(fn.lower(*shapes).cost_analysis()["flops"])


def model_flops(cfg: Molmo2Config, optimizer: optax.GradientTransformation, state, batch: VideoBatch, targets) -> float:
    """FLOPs of one train step over the whole global batch, as the model defines them (`flops_twin`).
    Gradient accumulation changes how a step runs, not what it computes, so the batch is counted whole
    (its micro-batches would run in a loop, whose body XLA counts once)."""
    return lowered_flops(jax.jit(functools.partial(_train_step, flops_twin(cfg), optimizer)), state, batch, targets)
