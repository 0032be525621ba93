"""The TPU slice to compile for, described by libtpu without a TPU: its devices, chips and mesh."""

from __future__ import annotations

import importlib.util
import math
import os
import re

import jax
from jax.experimental import mesh_utils, topologies
from jax.sharding import AxisType, Mesh

from stts_jax.accelerators import accelerator
from stts_jax.errors import AOTError
from stts_jax.train.sharding import MESH_AXES, MeshConfig, make_mesh

GIB = 1024**3

_TOPOLOGY = re.compile(r"^(v\d+[a-z]*):(\d+(?:x\d+){1,2})$")


def libtpu_installed() -> bool:
    """Where jax looks for the library that describes a TPU slice: the `libtpu` package, or a file named by
    $TPU_LIBRARY_PATH. Without either, jax says only "JAX TPU support not installed"."""
    return importlib.util.find_spec("libtpu") is not None or os.path.isfile(os.environ.get("TPU_LIBRARY_PATH", ""))


def topology_devices(topology: str, num_slices: int = 1) -> list:
    """The devices of `num_slices` TPU slices of `topology` ("v5p:2x2x2", "v6e:4x4"), described by libtpu."""
    if not _TOPOLOGY.match(topology):
        raise AOTError(
            f"--topology={topology!r} is not a TPU slice; write <generation>:<chips per dimension>, e.g. "
            "v5p:2x2x2, v5e:4x4, v6e:8x8 (v4 and v5p are 3-D, v5e and v6e 2-D)."
        )
    if num_slices < 1:
        raise AOTError(f"--num_slices={num_slices} must be >= 1.")
    if not libtpu_installed():
        raise AOTError(
            "libtpu is not installed, and it is what describes a TPU slice on a machine without one: "
            "pip install 'jax[tpu]' (the libtpu built for the installed jax), or install this package with its "
            "tpu extra: pip install -e '.[tpu]'."
        )
    # libtpu takes a machine-wide lock meant for real chips; describing a slice needs none of them,
    # and another JAX process (a test run) may already hold it.
    os.environ.setdefault("ALLOW_MULTIPLE_LIBTPU_LOAD", "1")
    try:
        return list(topologies.get_topology_desc(topology, "tpu", num_slices=num_slices).devices)
    except jax.errors.JaxRuntimeError as e:
        raise AOTError(
            f"libtpu rejected --topology={topology!r}: {str(e).splitlines()[0]}. Use a slice shape the "
            "generation offers: a multiple of one host's chips (2x2x1 on v4/v5p, 2x2 on v5e/v6e), e.g. "
            "v5p:2x2x2, v5p:4x4x4, v5e:4x4, v6e:8x8."
        ) from e


def chip_spec(device) -> tuple[float, float]:
    """(HBM bytes, peak bf16 FLOP/s) of one chip."""
    chip = accelerator(device.device_kind)
    if chip is None:
        raise AOTError(
            f"unknown TPU chip {device.device_kind!r}; add its HBM and peak FLOP/s to "
            "stts_jax.accelerators.ACCELERATORS."
        )
    return chip.hbm_gib * GIB, chip.peak_bf16_tflops * 1e12


def slice_mesh(mesh_cfg: MeshConfig, devices: list, num_slices: int) -> Mesh:
    """The config's ('data', 'fsdp', 'tensor') mesh over the slice; across slices only 'data' (DCN)."""
    if num_slices == 1:
        return make_mesh(mesh_cfg, devices)
    if mesh_cfg.data % num_slices or math.prod(mesh_cfg.shape) != len(devices):
        raise AOTError(
            f"mesh data x fsdp x tensor = {mesh_cfg.shape} over {num_slices} slices of {len(devices) // num_slices} "
            f"chips: 'data' must be a multiple of {num_slices} (data-parallel across slices) and the product "
            f"must be {len(devices)}; set --config.train.mesh.data/fsdp/tensor accordingly."
        )
    ici = (mesh_cfg.data // num_slices, mesh_cfg.fsdp, mesh_cfg.tensor)
    grid = mesh_utils.create_hybrid_device_mesh(ici, (num_slices, 1, 1), devices)
    return Mesh(grid, MESH_AXES, axis_types=(AxisType.Auto,) * 3)
