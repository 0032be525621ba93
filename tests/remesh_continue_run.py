"""Run in a subprocess with 8 fake CPU devices: a run on the real data pipeline (make_dataset's grain iterator)
saved on a (2, 2, 2) mesh, restored on a (1, 2, 2) mesh of 4 devices with a fresh iterator, and trained on.

Three continuations of the checkpointed step, K steps each, written to OUT.npz for the test to compare:
  uninterrupted  the saving process goes on on the (2, 2, 2) mesh with its own state and iterator;
  restored       checkpoint.restore onto the (1, 2, 2) mesh with a fresh `iter(dataset)`, then trained;
  replayed       the saved state (kept in memory) put on the (1, 2, 2) mesh, fed the uninterrupted batches.
Plus the state at the save (`saved/...`) and as restored (`restored_at_save/...`).

Usage: remesh_continue_run.py DATA_DIR WORKDIR OUT.npz
"""

from __future__ import annotations

import os
import sys

os.environ["XLA_FLAGS"] = "--xla_force_host_platform_device_count=8"
os.environ["JAX_PLATFORMS"] = "cpu"

import jax  # noqa: E402
import numpy as np  # noqa: E402

TESTS = os.path.dirname(os.path.abspath(__file__))
sys.path[:0] = [TESTS, os.path.dirname(TESTS)]  # this checkout's package first, not an installed one
from conftest import synthetic_config  # noqa: E402
from distributed_reference_run import flat, make_trainer, run_step, setup  # noqa: E402

from stts_jax.data.pipeline import make_dataset, to_model_batch  # noqa: E402
from stts_jax.train import checkpoint  # noqa: E402
from stts_jax.train.sharding import MeshConfig, make_mesh  # noqa: E402

BEFORE, AFTER = 2, 3  # steps before the checkpoint, steps after it

if __name__ == "__main__":
    data_dir, workdir, out = sys.argv[1:4]
    devices = jax.devices()
    assert len(devices) == 8
    config = synthetic_config(data_dir, BEFORE + AFTER, BEFORE + AFTER)
    model, pipeline, train_source, tokenizer = setup(config)
    dataset, _ = make_dataset(train_source, model, pipeline, tokenizer)
    sample, _ = to_model_batch(next(iter(dataset)), model, pipeline.layout)
    big, small = make_mesh(MeshConfig(2, 2, 2), devices), make_mesh(MeshConfig(1, 2, 2), devices[:4])
    shape, _, rows, init, big_step = make_trainer(config, model, sample, big, pipeline.batch_size)
    state = init()
    results: dict[str, np.ndarray] = {}

    iterator = iter(dataset)
    for _ in range(BEFORE):
        state, _ = run_step(big_step, state, next(iterator), model, pipeline, rows)
    mgr = checkpoint.manager(workdir)
    checkpoint.save(mgr, int(state.step), state, iterator)
    mgr.wait_until_finished()
    saved = jax.tree.map(np.asarray, state)
    results.update(flat(saved, "saved"))

    batches, losses = [], []
    for _ in range(AFTER):
        batches.append(next(iterator))
        state, metrics = run_step(big_step, state, batches[-1], model, pipeline, rows)
        losses.append(metrics["loss"])
    results |= flat(state, "uninterrupted") | {"uninterrupted/losses": np.asarray(losses)}
    for i, batch in enumerate(batches):
        results.update({f"uninterrupted/batch{i}/{k}": v for k, v in batch.items()})

    _, small_shardings, small_rows, _, small_step = make_trainer(config, model, sample, small, pipeline.batch_size)
    fresh = iter(dataset)  # starts at the beginning of the data; the checkpoint moves it
    restored = checkpoint.restore(checkpoint.manager(workdir), shape, small_shardings, fresh)
    placed = all(
        a.sharding == s for a, s in zip(jax.tree.leaves(restored), jax.tree.leaves(small_shardings), strict=True)
    )
    results |= flat(restored, "restored_at_save") | {"restored_on_small_mesh": np.asarray(placed)}
    losses = []
    for i in range(AFTER):
        batch = next(fresh)
        results.update({f"restored/batch{i}/{k}": v for k, v in batch.items()})
        restored, metrics = run_step(small_step, restored, batch, model, pipeline, small_rows)
        losses.append(metrics["loss"])
    results |= flat(restored, "restored") | {"restored/losses": np.asarray(losses)}

    replayed = jax.device_put(saved, small_shardings)
    for batch in batches:
        replayed, _ = run_step(small_step, replayed, batch, model, pipeline, small_rows)
    results.update(flat(replayed, "replayed"))
    np.savez(out, **results)
    print("saved at", BEFORE, "continued", AFTER, "steps on", big.devices.shape, "and", small.devices.shape)
