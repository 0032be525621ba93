"""Sharded training on a (2, 2, 2) mesh of 8 fake CPU devices equals one device; mesh errors are clear."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import flax.traverse_util
import jax
import numpy as np
import pytest

from stts_jax.errors import ConfigError
from stts_jax.train.checkpoint import restore_params
from stts_jax.train.sharding import MeshConfig, batch_sharding, make_mesh, spec_for


def test_mesh_2x2x2_matches_one_device_over_three_steps():
    script = os.path.join(os.path.dirname(__file__), "sharded_run.py")
    run = subprocess.run([sys.executable, script], capture_output=True, text=True, timeout=900)
    assert run.returncode == 0, run.stderr[-3000:]
    result = json.loads(run.stdout.strip().splitlines()[-1])
    np.testing.assert_allclose(result["mesh"], result["single"], rtol=1e-4)
    assert result["mesh"][-1] < result["mesh"][0]  # it trained
    assert any("fsdp" in s for s in result["specs"]) and any("tensor" in s for s in result["specs"])


def _logical_mesh():
    """A 1x2x2 mesh over one repeated CPU device: enough for sharding arithmetic, no computation."""
    devices = np.array(jax.devices() * 4)[:4]
    return jax.sharding.Mesh(devices.reshape(1, 2, 2), ("data", "fsdp", "tensor"))


def test_mesh_and_batch_errors_name_the_fix():
    with pytest.raises(ConfigError, match="does not match the 1 devices"):
        make_mesh(MeshConfig(data=2, fsdp=1, tensor=2))
    with pytest.raises(ConfigError, match="batch size 3 is not divisible by the data x fsdp axes"):
        batch_sharding(_logical_mesh(), 3)
    assert batch_sharding(_logical_mesh(), 4).spec == jax.sharding.PartitionSpec(("data", "fsdp"))


def test_axes_that_do_not_divide_are_dropped_not_failed():
    mesh = _logical_mesh()
    assert spec_for((64, 48), ("embed", "mlp"), mesh) == jax.sharding.PartitionSpec("fsdp", "tensor")
    assert spec_for((63, 48), ("embed", "mlp"), mesh) == jax.sharding.PartitionSpec(None, "tensor")


@pytest.mark.slow  # 40 s
def test_checkpoint_from_8_devices_restores_on_4(tmp_path):
    script = os.path.join(os.path.dirname(__file__), "remesh_run.py")
    run = subprocess.run([sys.executable, script, str(tmp_path)], capture_output=True, text=True, timeout=900)
    assert run.returncode == 0, run.stderr[-3000:]
    assert "restored 2 on (1, 2, 2)" in run.stdout
    # export / evaluate / init_from read the same checkpoint in a one-device process (a pod's run on a laptop)
    _, params, step = restore_params(str(tmp_path))
    saved = np.load(tmp_path / "saved_params.npz")
    flat = flax.traverse_util.flatten_dict(params, sep="/")
    assert step == 2 and sorted(flat) == sorted(saved.files)
    for name in saved.files:
        np.testing.assert_array_equal(flat[name], saved[name], err_msg=name)
