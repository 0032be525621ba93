"""Which JAX backends a command starts. libtpu comes with `jax[tpu]` (for ahead-of-time TPU compiles) and,
started on a machine without TPU chips, prints errors about worker hostnames and lock files; commands
start only the backends the machine has. `JAX_PLATFORMS` set by the user wins."""

from __future__ import annotations

import glob
import importlib.util
import os

import jax

GPU_PLUGINS = {"cuda": ("jax_cuda12_plugin", "jax_cuda13_plugin"), "rocm": ("jax_rocm7_plugin", "jax_rocm60_plugin")}


def has_tpu_chips() -> bool:
    """TPU VMs expose their chips as /dev/accel* (v4 and earlier) or VFIO groups (v5e, v5p, v6e)."""
    return bool(glob.glob("/dev/accel*") or glob.glob("/dev/vfio/[0-9]*"))


def start_present_backends() -> None:
    """Before any backend starts: on a machine without TPU chips, the GPU backend (if its plugin is
    installed) and the CPU, not the TPU runtime."""
    if os.environ.get("JAX_PLATFORMS") or has_tpu_chips():
        return
    gpus = [name for name, plugins in GPU_PLUGINS.items() if any(importlib.util.find_spec(p) for p in plugins)]
    jax.config.update("jax_platforms", ",".join([*gpus, "cpu"]))
