"""Run in a subprocess with 8 fake CPU devices: losses of a few train steps on a mesh vs one device."""

from __future__ import annotations

import json
import os
import sys

os.environ["XLA_FLAGS"] = "--xla_force_host_platform_device_count=8"

import jax  # noqa: E402
import numpy as np  # noqa: E402

sys.path.insert(0, os.path.dirname(__file__))
from conftest import stts_batch  # noqa: E402
from test_train_step import answer_targets  # noqa: E402

from stts_jax.models import get_config  # noqa: E402
from stts_jax.models.config import STTSConfig  # noqa: E402
from stts_jax.train.optimizer import OptimizerConfig, make_optimizer  # noqa: E402
from stts_jax.train.sharding import MeshConfig, batch_sharding, make_mesh, state_shardings  # noqa: E402
from stts_jax.train.step import init_state, sharded_init, sharded_train_step  # noqa: E402
from stts_jax.vlm.model import param_shapes  # noqa: E402


def build(mesh_shape, devices, steps=3):
    """Trains `steps` steps on a mesh -> (cfg, optimizer, state, state shape, batch, a data iterator, losses)."""
    import grain

    cfg = get_config("tiny", stts=STTSConfig(method="stts", prune_ratio=0.5, layer=1))
    batch = stts_batch(cfg, [[2, 1], [3], [1, 2], [2]], 4, 96, llm_seq_len=72)
    targets = answer_targets(batch)
    rates = tuple((p, lr * 100) for p, lr in OptimizerConfig().learning_rates)
    opt_cfg = OptimizerConfig(learning_rates=rates, warmup_steps=1, total_steps=20)
    optimizer = make_optimizer(opt_cfg, param_shapes(cfg))
    mesh = make_mesh(MeshConfig(*mesh_shape), devices)
    shape = jax.eval_shape(lambda b: init_state(cfg, optimizer, b, 0), batch)
    shardings = state_shardings(shape, mesh)
    rows = batch_sharding(mesh, 4)
    state = sharded_init(cfg, optimizer, jax.device_put(batch, rows), 0, shardings)
    step = sharded_train_step(cfg, optimizer, shardings, rows)
    out = []
    for _ in range(steps):
        state, metrics = step(state, jax.device_put(batch, rows), jax.device_put(targets, rows))
        out.append(float(metrics["loss"]))
    iterator = iter(grain.MapDataset.range(10).to_iter_dataset())  # stands in for the data iterator
    next(iterator)
    return cfg, optimizer, state, shape, batch, iterator, out


def losses(mesh_shape, devices, steps=3):
    *_, state, _shape, _batch, _iterator, out = build(mesh_shape, devices, steps)
    return out, sorted({str(p.sharding.spec) for p in jax.tree.leaves(state.params)})


if __name__ == "__main__":
    devices = jax.devices()
    assert len(devices) == 8
    mesh_losses, specs = losses((2, 2, 2), devices)
    single_losses, _ = losses((1, 1, 1), devices[:1])
    print(json.dumps({"mesh": mesh_losses, "single": single_losses, "specs": specs}))
    np.testing.assert_allclose(mesh_losses, single_losses, rtol=1e-4)
