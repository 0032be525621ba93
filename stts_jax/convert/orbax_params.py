"""Params-only Orbax checkpoints: `config.json` (Hugging Face layout) beside an Orbax params tree."""

from __future__ import annotations

import json
import os
from typing import Any

import jax
import orbax.checkpoint as ocp

from stts_jax.convert.hf import HF_CONFIG_FILE, cast_floating, read_config
from stts_jax.convert.hf_config import config_to_hf
from stts_jax.errors import CheckpointError
from stts_jax.models.config import Molmo2Config
from stts_jax.vlm.model import param_shapes

PARAMS_DIR = "params"


def save_params(cfg: Molmo2Config, params: Any, path: str, dtype: str | None = None) -> None:
    """Writes `path/config.json` and `path/params` (Orbax); `dtype` casts floating params (e.g. bfloat16)."""
    path = os.path.abspath(path)
    if os.path.exists(os.path.join(path, PARAMS_DIR)):
        raise CheckpointError(f"{path}/{PARAMS_DIR} already exists; choose an empty output directory.")
    os.makedirs(path, exist_ok=True)
    params = cast_floating(params, dtype)
    checkpointer = ocp.StandardCheckpointer()
    checkpointer.save(os.path.join(path, PARAMS_DIR), params)
    checkpointer.wait_until_finished()
    with open(os.path.join(path, HF_CONFIG_FILE), "w") as f:
        json.dump(config_to_hf(cfg), f, indent=2)


def load_params(path: str, **runtime: Any) -> tuple[Molmo2Config, Any]:
    """Reads what `save_params` wrote -> (config, params), checking the tree against the model."""
    path = os.path.abspath(path)
    cfg = read_config(path, **runtime)
    params_path = os.path.join(path, PARAMS_DIR)
    if not os.path.isdir(params_path):
        raise CheckpointError(f"{params_path} not found: not a params-only Orbax checkpoint written by stts_jax.")
    checkpointer = ocp.StandardCheckpointer()
    stored = checkpointer.metadata(params_path).item_metadata.tree
    expected = param_shapes(cfg)
    if "scorer" in stored and "scorer" not in expected:
        raise CheckpointError(
            f"{path} is an STTS export: it holds the STTS scorer, which a Molmo2 checkpoint has no place for. For a "
            "Hugging Face folder with the scorer beside it, export the run: python -m stts_jax.export "
            "--workdir=RUN --format=hf --out=DIR; to use this one, load it with stts_jax.export.formats.load_export."
        )
    shapes = lambda tree: jax.tree.map(lambda x: tuple(x.shape), tree)
    if shapes(stored) != shapes(expected):
        raise CheckpointError(
            f"{params_path} holds params of another model shape than {path}/config.json describes "
            "(different sizes or layers); use the config.json saved with these params."
        )
    return cfg, checkpointer.restore(params_path, local_target(stored))


def local_target(stored: Any) -> Any:
    """An Orbax restore target for the stored tree's arrays on this process's first device, not the sharding
    saved with them (another process's devices, or a pod's layout: restoring onto it fails on every process but
    one, and the others wait in Orbax's sync)."""
    device = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
    return jax.tree.map(lambda m: jax.ShapeDtypeStruct(m.shape, m.dtype, sharding=device), stored)
