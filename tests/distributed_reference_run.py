"""Run in a subprocess with 2 fake CPU devices: the single-process reference of a 2-host training run.

A 2-host run (`python -m stts_jax.train --coordinator=...`, mesh data=2, data.batch_size rows per host)
assembles each global batch from the hosts' local batches, host 0's rows first. Here one process builds
what each host reads without relying on `make_dataset`'s sharding: host h's pipeline over the records
h, h + 2, h + 4, ... of the training split (a pre-sliced source, read as shard 0 of 1), concatenates the
two hosts' batches row-wise and trains on the same (data=2) mesh. Writes the params after every step and the
metrics of every step.

Usage: distributed_reference_run.py DATA_DIR STEPS OUT.npz
"""

from __future__ import annotations

import os
import sys

if __name__ == "__main__":  # (remesh_continue_run.py imports the helpers with its own device count)
    os.environ["XLA_FLAGS"] = "--xla_force_host_platform_device_count=2"
    os.environ["JAX_PLATFORMS"] = "cpu"

import jax  # noqa: E402
import numpy as np  # noqa: E402

TESTS = os.path.dirname(os.path.abspath(__file__))
sys.path[:0] = [TESTS, os.path.dirname(TESTS)]  # this checkout's package first, not an installed one
from conftest import synthetic_config  # noqa: E402

from stts_jax.data.pipeline import make_dataset, to_model_batch  # noqa: E402
from stts_jax.data.sources import source  # noqa: E402
from stts_jax.train.loop import model_config, pipeline_config  # noqa: E402
from stts_jax.train.optimizer import OptimizerConfig, make_optimizer  # noqa: E402
from stts_jax.train.sharding import MeshConfig, batch_sharding, make_mesh, state_shardings  # noqa: E402
from stts_jax.train.step import init_state, sharded_init, sharded_train_step  # noqa: E402
from stts_jax.vlm.model import param_shapes  # noqa: E402


class HostShard:
    """Records shard, shard + count, shard + 2 count, ... of a random-access source: what host `shard` reads."""

    def __init__(self, records, shard: int, count: int):
        self.records, self.shard, self.count = records, shard, count

    def __len__(self) -> int:
        return len(range(self.shard, len(self.records), self.count))

    def __getitem__(self, index: int):
        return self.records[self.shard + self.count * int(index)]


def setup(config):
    """(model config, pipeline config, optimizer, training source, tokenizer), built from `config` as the loop does."""
    model = model_config(config)
    pipeline = pipeline_config(config, model)
    train_source, tokenizer = source(config, "train")
    return model, pipeline, train_source, tokenizer


def make_trainer(config, model, sample, mesh, global_rows: int):
    """(state shape, state shardings, batch sharding, init, train step) on `mesh`, built as the loop builds them;
    init() is the initial state, created in its shardings."""
    optimizer_fields = config.train.optimizer
    opt_cfg = OptimizerConfig(
        **{k: tuple(map(tuple, v)) if k == "learning_rates" else v for k, v in optimizer_fields.items()}
    )
    optimizer = make_optimizer(opt_cfg, param_shapes(model))
    seed = config.train.seed
    shape = jax.eval_shape(lambda b: init_state(model, optimizer, b, seed), sample)
    shardings = state_shardings(shape, mesh)
    rows = batch_sharding(mesh, global_rows)
    init = lambda: sharded_init(model, optimizer, jax.device_put(sample, rows), seed, shardings)
    step = sharded_train_step(model, optimizer, shardings, rows, config.train.accumulate_steps)
    return shape, shardings, rows, init, step


def run_step(step, state, host_batch: dict, model, pipeline, rows):
    video, targets = to_model_batch(host_batch, model, pipeline.layout)
    state, metrics = step(state, jax.device_put(video, rows), jax.device_put(targets, rows))
    return state, {k: float(v) for k, v in jax.device_get(metrics).items()}


def flat(tree, prefix: str) -> dict[str, np.ndarray]:
    leaves = jax.tree_util.tree_flatten_with_path(tree)[0]
    return {prefix + jax.tree_util.keystr(path): np.asarray(leaf) for path, leaf in leaves}


if __name__ == "__main__":
    data_dir, steps, out = sys.argv[1], int(sys.argv[2]), sys.argv[3]
    assert len(jax.devices()) == 2
    config = synthetic_config(data_dir, steps, steps)
    config.train.mesh.data = 2
    model, pipeline, train_source, tokenizer = setup(config)
    hosts = [
        make_dataset(HostShard(train_source, h, 2), model, pipeline, tokenizer, shard_index=0, shard_count=1)[0]
        for h in range(2)
    ]
    iterators = [iter(d) for d in hosts]
    concat = lambda batches: {k: np.concatenate([b[k] for b in batches]) for k in batches[0]}
    sample, _ = to_model_batch(concat([next(iter(d)) for d in hosts]), model, pipeline.layout)
    mesh = make_mesh(MeshConfig(**config.train.mesh))
    _, _, rows, init, step = make_trainer(config, model, sample, mesh, 2 * pipeline.batch_size)
    state = init()
    results, history = {}, []
    for n in range(1, steps + 1):
        state, metrics = run_step(step, state, concat([next(it) for it in iterators]), model, pipeline, rows)
        history.append(metrics)
        results |= flat(state.params, f"step{n}/params")
    results |= {f"metrics/{k}": np.asarray([m[k] for m in history]) for k in history[0]}
    np.savez(out, **results)
    print("reference losses", [m["loss"] for m in history])
