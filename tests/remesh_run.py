"""Run in a subprocess with 8 fake CPU devices: save a sharded TrainState on a (2, 2, 2) mesh, restore it
on a (1, 2, 2) mesh of 4 devices, and check every array and its new sharding. Leaves the run's config.json
and the saved params (saved_params.npz) beside the checkpoint, for a restore on one device to compare."""

from __future__ import annotations

import os
import sys

os.environ["XLA_FLAGS"] = "--xla_force_host_platform_device_count=8"

import flax.traverse_util  # noqa: E402
import jax  # noqa: E402
import numpy as np  # noqa: E402

sys.path.insert(0, os.path.dirname(__file__))
from sharded_run import build  # noqa: E402

from stts_jax.train import checkpoint  # noqa: E402
from stts_jax.train.experiment import load_config_file, model_config  # noqa: E402
from stts_jax.train.sharding import MeshConfig, make_mesh, state_shardings  # noqa: E402

if __name__ == "__main__":
    workdir = sys.argv[1]
    devices = jax.devices()
    cfg, optimizer, state, shape, batch, iterator, _ = build((2, 2, 2), devices, steps=2)
    mgr = checkpoint.manager(workdir)
    checkpoint.save(mgr, int(state.step), state, iterator)
    mgr.wait_until_finished()
    saved = jax.tree.map(np.asarray, state)
    config = load_config_file(os.path.join(os.path.dirname(__file__), "..", "configs", "synthetic.py"), "variant=tiny")
    assert model_config(config).stts.uses_scorer == cfg.stts.uses_scorer  # the same parameter shapes
    with open(os.path.join(workdir, checkpoint.RUN_CONFIG_FILE), "w") as f:
        f.write(config.to_json())
    flat = flax.traverse_util.flatten_dict(saved.params, sep="/")
    np.savez(os.path.join(workdir, "saved_params.npz"), **flat)

    small = make_mesh(MeshConfig(1, 2, 2), devices[:4])
    shardings = state_shardings(shape, small)
    restored = checkpoint.restore(checkpoint.manager(workdir), shape, shardings, iter(iterator))
    for a, b, s in zip(jax.tree.leaves(saved), jax.tree.leaves(restored), jax.tree.leaves(shardings), strict=True):
        np.testing.assert_array_equal(a, np.asarray(b))
        assert b.sharding == s and len(b.sharding.device_set) <= 4
    print("restored", int(restored.step), "on", small.devices.shape)
