"""Run in a subprocess with 8 fake CPU devices: one train step of the tiny STTS model with splash attention
on a (2, 2, 2) mesh against the same step on one device (test_stts_reference.py runs it).

Prints one JSON line: the metrics of both runs, the worst parameter-update difference relative to each
leaf's update scale (the update is the gradient: the optimizer is SGD with rate 1), and whether the
mesh program ran the Pallas kernel inside a shard_map.
"""

from __future__ import annotations

import json
import os
import sys

os.environ["XLA_FLAGS"] = "--xla_force_host_platform_device_count=8"

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path[:0] = [os.path.dirname(HERE), HERE]  # this checkout's package first, then the tests

import jax  # noqa: E402
import numpy as np  # noqa: E402
import optax  # noqa: E402
from test_stts_reference import answer_targets, make_batch, stts_config  # noqa: E402

from stts_jax.train.sharding import MeshConfig, batch_sharding, make_mesh, state_shardings  # noqa: E402
from stts_jax.train.step import init_state, sharded_init, sharded_train_step  # noqa: E402

ROWS = [[3, 1], [2, 2], [1, 1], [4]]  # one row per data x fsdp shard


def one_step(cfg, optimizer, batch, targets, mesh_shape, devices):
    """(params before, params after, metrics, jaxpr text) of one sharded train step."""
    mesh = make_mesh(MeshConfig(*mesh_shape), devices)
    shape = jax.eval_shape(lambda b: init_state(cfg, optimizer, b, 0), batch)
    shardings = state_shardings(shape, mesh)
    rows = batch_sharding(mesh, len(ROWS))
    state = sharded_init(cfg, optimizer, jax.device_put(batch, rows), 0, shardings)
    before = jax.device_get(state.params)
    args = (state, jax.device_put(batch, rows), jax.device_put(targets, rows))
    traced = sharded_train_step(cfg, optimizer, shardings, rows).trace(*args)
    state, metrics = traced.lower().compile()(*args)
    return before, jax.device_get(state.params), jax.device_get(metrics), str(traced.jaxpr)


def main():
    devices = jax.devices()
    assert len(devices) == 8, devices
    cfg = stts_config(0.5).replace(attention_impl="splash")
    batch = make_batch(cfg, ROWS, [[3, 3], [3, 3], [3, 3], [3]], [False] * 4 * 4, 0)
    targets = answer_targets(batch)
    optimizer = optax.sgd(1.0)  # the update is the gradient itself (Adam's first step would hide its scale)
    before, mesh_params, mesh_metrics, jaxpr = one_step(cfg, optimizer, batch, targets, (2, 2, 2), devices)
    single_before, single_params, single_metrics, _ = one_step(cfg, optimizer, batch, targets, (1, 1, 1), devices[:1])
    paths = [jax.tree_util.keystr(p) for p, _ in jax.tree_util.tree_flatten_with_path(before)[0]]
    leaves = list(zip(*(jax.tree.leaves(t) for t in (before, single_before, mesh_params, single_params)), strict=True))
    for (b, s_b, _, _), path in zip(leaves, paths, strict=True):
        np.testing.assert_array_equal(b, s_b, err_msg=f"{path}: the runs must start from the same parameters")
    # Each leaf's update error relative to its own scale. Key biases get no gradient in exact arithmetic
    # (softmax ignores a constant added to all of a query's logits): theirs must be noise in both runs.
    scale = max(float(np.abs(s - b).max()) for b, _, _, s in leaves)
    key_bias = lambda path: path.endswith("['k']['bias']")
    errors = {
        path: float(np.abs((m - b) - (s - b)).max() / (np.abs(s - b).max() + 1e-9 * scale))
        for (b, _, m, s), path in zip(leaves, paths, strict=True)
        if not key_bias(path)
    }
    worst = max(errors, key=errors.get)
    key_bias_update = max(
        float(np.abs(x - b).max()) / scale
        for (b, _, m, s), path in zip(leaves, paths, strict=True)
        if key_bias(path)
        for x in (m, s)
    )
    print(
        json.dumps(
            {
                "mesh": {k: float(v) for k, v in mesh_metrics.items()},
                "single": {k: float(v) for k, v in single_metrics.items()},
                "worst_update_error": errors[worst],
                "worst_leaf": worst,
                "key_bias_update": key_bias_update,
                "shard_map": "shard_map" in jaxpr,
                "pallas": "pallas_call" in jaxpr,
            }
        )
    )


if __name__ == "__main__":
    main()
