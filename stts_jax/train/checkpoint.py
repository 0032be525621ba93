"""Orbax checkpoints of a run: the TrainState (params, optimizer, step, RNG) and the data iterator.

Saves are asynchronous and atomic (Orbax writes to a temporary directory and renames); the last
`keep` are kept. Restoring goes against an abstract target that carries the *current* shardings, so
a run resumes on another mesh. A checkpoint of another model shape is refused with a clear error.
"""

from __future__ import annotations

import json
import os

import grain
import jax
import ml_collections
import numpy as np
import orbax.checkpoint as ocp
from etils import epath

from stts_jax.errors import CheckpointError
from stts_jax.models.config import Molmo2Config
from stts_jax.train.experiment import model_config

RUN_CONFIG_FILE = "config.json"  # the run's experiment config, beside checkpoints/


def workdir_path(workdir: str) -> epath.Path:
    """A run directory, local or on GCS (gs://bucket/run; needs gcsfs, in the `tpu` extra)."""
    return epath.Path(workdir if "://" in workdir else os.path.abspath(workdir))


def manager(workdir: str, keep: int = 3) -> ocp.CheckpointManager:
    return ocp.CheckpointManager(
        workdir_path(workdir) / "checkpoints",
        options=ocp.CheckpointManagerOptions(max_to_keep=keep, enable_async_checkpointing=True),
        # grain's handler writes one iterator state per process (each host reads its own shard)
        item_handlers={"state": ocp.StandardCheckpointHandler(), "data": grain.checkpoint.CheckpointHandler()},
    )


def save(mgr: ocp.CheckpointManager, step: int, state, iterator) -> None:
    mgr.save(
        step,
        args=ocp.args.Composite(state=ocp.args.StandardSave(state), data=grain.checkpoint.CheckpointSave(iterator)),
    )


def restore(mgr: ocp.CheckpointManager, state_shape, shardings, iterator):
    """The latest step's state, placed in `shardings`, with `iterator` moved to where it was; None if none."""
    step = mgr.latest_step()
    if step is None:
        return None
    stored_params = mgr.item_metadata(step)["state"].tree["params"]
    shape = lambda tree: jax.tree.map(lambda x: tuple(x.shape), tree)
    if shape(stored_params) != shape(state_shape.params):
        raise CheckpointError(
            f"{mgr.directory}/{step} holds params of another model shape than this config builds (different "
            "sizes, layers or STTS scorer). Use a new --workdir, or the config the checkpoint was trained with."
        )
    target = jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), state_shape, shardings)
    restored = mgr.restore(
        step,
        args=ocp.args.Composite(
            state=ocp.args.StandardRestore(target), data=grain.checkpoint.CheckpointRestore(iterator)
        ),
    )
    return restored["state"]


def run_config(workdir: str) -> ml_collections.ConfigDict:
    """The experiment config a training run wrote into its workdir."""
    path = workdir_path(workdir) / RUN_CONFIG_FILE
    if not path.exists():
        raise CheckpointError(f"{path} not found: --workdir must be a directory written by `python -m stts_jax.train`.")
    return ml_collections.ConfigDict(json.loads(path.read_text()))


def restore_params(workdir: str, step: int | None = None) -> tuple[Molmo2Config, dict, int]:
    """(model config, params as host arrays, step) of a run's checkpoint; the latest if `step` is None."""
    cfg = model_config(run_config(workdir))
    mgr = manager(workdir)
    saved = sorted(mgr.all_steps())
    if not saved:
        raise CheckpointError(f"{workdir}/checkpoints holds no checkpoint; train first or check --workdir.")
    step = saved[-1] if step is None else step
    if step not in saved:
        raise CheckpointError(f"step {step} was never saved in {workdir} (saved: {saved}); pass one of those.")
    # Against a target on this process's first device: a checkpoint written by a pod (another device
    # layout) restores here too, where a target-less restore refuses it.
    device = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
    stored = mgr.item_metadata(step)["state"].tree
    target = jax.tree.map(lambda m: jax.ShapeDtypeStruct(m.shape, m.dtype, sharding=device), stored)
    restored = mgr.restore(step, args=ocp.args.Composite(state=ocp.args.StandardRestore(target)))
    return cfg, jax.tree.map(np.asarray, restored["state"]["params"]), step
