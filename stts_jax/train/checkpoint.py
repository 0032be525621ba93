"""Orbax checkpoints of a run: the TrainState (params, optimizer, step, RNG) and the data iterator.

Saves are asynchronous and atomic (Orbax writes to a temporary directory and renames); the last
`keep` are kept. Restoring goes against an abstract target that carries the *current* shardings, so
a run resumes on another mesh. A checkpoint of another model shape is refused with a clear error.
"""

from __future__ import annotations

import importlib.metadata
import json
import logging
import os
import subprocess
from typing import Any

import grain
import jax
import ml_collections
import numpy as np
import orbax.checkpoint as ocp
from etils import epath

from stts_jax.convert.orbax_params import local_target
from stts_jax.errors import CheckpointError, ConfigError
from stts_jax.models.config import Molmo2Config
from stts_jax.train.experiment import model_config

log = logging.getLogger(__name__)

RUN_CONFIG_FILE = "config.json"  # the run's experiment config, beside checkpoints/


def workdir_path(workdir: str) -> epath.Path:
    """A run directory, local or on GCS (gs://bucket/run; needs gcsfs, in the `tpu` extra)."""
    return epath.Path(workdir if "://" in workdir else os.path.abspath(workdir))


def prepare_workdir(workdir: str) -> epath.Path:
    """The run directory, created if missing; ConfigError naming it if it is a file or cannot be written, so
    that a run fails before its first step instead of at its first checkpoint. A gs:// directory is only
    checked for being a file (its writability shows at the first write)."""
    path = workdir_path(workdir)
    if path.is_file():
        raise ConfigError(f"--workdir {workdir} is a file; pass a directory (a new one, or a run's to resume it).")
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise ConfigError(f"--workdir {workdir} cannot be created ({e}); pass a directory you can write to.") from e
    if "://" not in workdir and not os.access(path, os.W_OK | os.X_OK):
        raise ConfigError(f"--workdir {workdir} is not writable; pass one you can write to, or change its permissions.")
    return path


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
    """The latest readable step's state, placed in `shardings`, with `iterator` moved to where it was; None
    if there is no checkpoint. A step that cannot be read (truncated or corrupted files) is reported and
    moved to `damaged_checkpoints/` beside `checkpoints/` (kept for inspection, out of the way of the steps
    this run will save), and the step before it is restored; if none can be read, CheckpointError."""
    damaged = []
    for step in sorted(mgr.all_steps(), reverse=True):
        try:
            return _restore_step(mgr, step, state_shape, shardings, iterator)
        except CheckpointError:
            raise
        except Exception as e:  # tensorstore, JSON and msgpack errors of a damaged step
            aside = epath.Path(mgr.directory).parent / "damaged_checkpoints" / str(step)
            log.warning(
                "checkpoint %s/%d cannot be read (%s: %s); moved to %s, trying the one before",
                mgr.directory,
                step,
                type(e).__name__,
                str(e)[:300],
                aside,
            )
            if jax.process_index() == 0:
                aside.parent.mkdir(parents=True, exist_ok=True)
                (epath.Path(mgr.directory) / str(step)).rename(aside)
            damaged.append(step)
    if damaged:
        mgr.reload()
        raise CheckpointError(
            f"no checkpoint in {mgr.directory} can be read (damaged: {damaged}, moved to damaged_checkpoints/); "
            "start a new --workdir, or restore the files."
        )
    return None


def _restore_step(mgr: ocp.CheckpointManager, step: int, state_shape, shardings, iterator):
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
    if step != mgr.latest_step():
        mgr.reload()  # the damaged steps after it are gone: saves continue from here
    return restored["state"]


# What a resumed run may change without becoming another experiment (prefixes of dotted config fields).
CHANGEABLE = (
    "train.steps",
    "train.checkpoint_every",
    "train.keep_checkpoints",
    "train.eval_every",
    "train.eval_batches",
    "train.mesh.",  # a run resumes on another mesh
    "data.data_dir",  # a cache: datasets are named by their content
    "data.worker_count",
    "data.worker_buffer_size",
    "data.build_workers",
    "data.progress",
    "provenance.",
)


def _flat(tree: dict, prefix: str = "") -> dict[str, Any]:
    out = {}
    for key, value in tree.items():
        if isinstance(value, dict):
            out.update(_flat(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def experiment_changes(saved: dict, config: dict) -> list[tuple[str, Any, Any]]:
    """(field, saved value, new value) for every field that differs and is not in CHANGEABLE."""
    old, new = _flat(saved), _flat(json.loads(json.dumps(config)))  # lists and tuples compared alike
    return [
        (field, old.get(field), new.get(field))
        for field in sorted(set(old) | set(new))
        if old.get(field) != new.get(field) and not field.startswith(CHANGEABLE)
    ]


def provenance() -> dict[str, Any]:
    """What produced a run: the package's git revision (when run from a checkout) and library versions."""
    here = os.path.dirname(os.path.abspath(__file__))
    try:
        revision = subprocess.run(
            ["git", "-C", here, "describe", "--always", "--dirty", "--abbrev=40"],
            capture_output=True,
            text=True,
            timeout=10,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        revision = ""
    versions = {}
    for package in ("stts_jax", "jax", "jaxlib", "flax", "optax", "orbax-checkpoint", "grain", "numpy"):
        try:
            versions[package] = importlib.metadata.version(package)
        except importlib.metadata.PackageNotFoundError:
            versions[package] = None
    return {"git_revision": revision or None, "versions": versions}


def _saved_config(path) -> dict:
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise CheckpointError(
            f"{path} is not valid JSON ({e}): the record of this workdir's experiment is damaged. Restore it (the "
            "run's original --config) or train in a new --workdir."
        ) from None


def record_experiment(workdir: str, config: ml_collections.ConfigDict, resuming: bool, write: bool = True) -> None:
    """Writes the run's config (and its provenance) into the workdir. A workdir holds one experiment: when
    `resuming` from a checkpoint, a config that changes anything beyond CHANGEABLE is refused, naming
    the fields, and nothing is written."""
    path = workdir_path(workdir) / RUN_CONFIG_FILE
    current = json.loads(config.to_json())
    if resuming and path.exists():
        changes = experiment_changes(_saved_config(path), current)
        if changes:
            listed = "; ".join(f"{f}: {old!r} there, {new!r} now" for f, old, new in changes[:8])
            more = f" (and {len(changes) - 8} more)" if len(changes) > 8 else ""
            raise ConfigError(
                f"{workdir} holds a run of another experiment: {listed}{more}. Use a new --workdir, or the "
                f"config it was trained with (saved in {path}); a resumed run may change only {list(CHANGEABLE)}."
            )
    if write:
        current["provenance"] = provenance()
        path.write_text(json.dumps(current, indent=2))


def run_config(workdir: str) -> ml_collections.ConfigDict:
    """The experiment config a training run wrote into its workdir."""
    path = workdir_path(workdir) / RUN_CONFIG_FILE
    if not path.exists():
        raise CheckpointError(f"{path} not found: --workdir must be a directory written by `python -m stts_jax.train`.")
    return ml_collections.ConfigDict(_saved_config(path))


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
    target = local_target(mgr.item_metadata(step)["state"].tree)
    restored = mgr.restore(step, args=ocp.args.Composite(state=ocp.args.StandardRestore(target)))
    return cfg, jax.tree.map(np.asarray, restored["state"]["params"]), step
