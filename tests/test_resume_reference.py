"""Interrupted, multi-host and re-meshed training runs equal independent uninterrupted references.

- SIGTERM mid-run (the CLI exits 143), then the same command again: final TrainState and every step's
  metrics equal an uninterrupted run of the same command in another workdir (bitwise on CPU).
- Two processes joined with jax.distributed (mesh data=2, each host reading its own shard), stopped and
  resumed once: params and losses equal one process training on the global batch built from the two
  hosts' record sets (tests/distributed_reference_run.py).
- A checkpoint saved on a (2, 2, 2) mesh with the real grain iterator, restored on (1, 2, 2): the same
  batches come next and training goes on as on the original mesh (tests/remesh_continue_run.py).
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time

import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest
from conftest import ROOT
from conftest import synthetic_config as load_config
from test_train_loop import overrides

from stts_jax.data.sources import source
from stts_jax.train import checkpoint

HERE = os.path.dirname(os.path.abspath(__file__))
# wall-clock metrics, the only ones allowed to differ; the compile (and the model FLOPs) are logged with the
# first step of each start of the run
TIMING = (
    "train/step_seconds",
    "train/tokens_per_second",
    "train/input_wait_seconds",
    "train/mfu",
    "train/compile_seconds",
    "train/model_tflop_per_step",
)


def command(data_dir, workdir, steps: int, every: int, *extra: str) -> list[str]:
    """The training CLI at the sizes of conftest.synthetic_config (same config, same data)."""
    return [sys.executable, "-m", "stts_jax.train", *overrides(data_dir, steps, every), f"--workdir={workdir}", *extra]


def start(args: list[str], cache: str | None = None) -> subprocess.Popen:
    """The command in a subprocess; `cache`: a JAX persistent compilation cache directory (a hit runs the
    executable XLA compiled for the same program, so it saves time without changing a number)."""
    env = {**os.environ, "JAX_PLATFORMS": "cpu"}
    if cache:
        env.update(JAX_COMPILATION_CACHE_DIR=cache, JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="2")
    return subprocess.Popen(args, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)


def finish(process: subprocess.Popen, timeout: float = 600) -> str:
    output = process.communicate(timeout=timeout)[0]
    assert process.returncode == 0, output[-3000:]
    return output


def stop(*processes: subprocess.Popen) -> None:
    """Kills the ones still running (after a failed assertion), so no run outlives its test."""
    for process in processes:
        if process.poll() is None:
            process.kill()
            process.communicate()


def metrics(workdir) -> list[dict]:
    path = os.path.join(workdir, "metrics.jsonl")
    if not os.path.exists(path):
        return []
    with open(path) as f:
        lines = f.read().splitlines()
    return [json.loads(line) for line in lines if line.endswith("}")]  # a line being written is left out


def without_timing(line: dict) -> dict:
    return {k: v for k, v in line.items() if k not in TIMING}


def stored_state(workdir, step: int | None = None) -> tuple[int, dict]:
    """(step, the checkpoint's TrainState as a dict of numpy arrays), restored on this process's one
    device whatever mesh or processes saved it."""
    mgr = checkpoint.manager(str(workdir))
    step = mgr.latest_step() if step is None else step
    device = jax.sharding.SingleDeviceSharding(jax.devices()[0])
    target = jax.tree.map(
        lambda m: jax.ShapeDtypeStruct(m.shape, m.dtype, sharding=device), mgr.item_metadata(step)["state"].tree
    )
    restored = mgr.restore(step, args=ocp.args.Composite(state=ocp.args.StandardRestore(target)))
    return step, jax.tree.map(np.asarray, restored["state"])


def flat(tree, prefix: str) -> dict[str, np.ndarray]:
    """Like distributed_reference_run.flat: `prefix` + jax.tree_util.keystr(path) -> array."""
    return {prefix + jax.tree_util.keystr(p): np.asarray(x) for p, x in jax.tree_util.tree_flatten_with_path(tree)[0]}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    """The synthetic dataset, built once before processes read it side by side."""
    path = str(tmp_path_factory.mktemp("data"))
    source(load_config(path, 1, 1), "train")
    return path


@pytest.mark.slow  # 116 s; test_train_loop's kill -9 restart and SIGINT tests stay in the default suite
def test_sigterm_then_restart_equals_the_uninterrupted_run(data_dir, tmp_path):
    """SIGTERM after the first logged step: exit 143 with a checkpoint of the last finished step; the same
    command resumes from exactly that step; state and per-step metrics equal an uninterrupted run."""
    steps = 8
    cache = str(tmp_path / "compilation_cache")  # the restart reuses the first runs' executables
    interrupted = tmp_path / "interrupted"
    args = command(data_dir, interrupted, steps, 1000)  # saves only at SIGTERM and at the end
    reference = start(command(data_dir, tmp_path / "reference", steps, 1000), cache)
    process = start(args, cache)
    try:
        deadline = time.time() + 600
        while not metrics(interrupted):  # the first step compiled, ran and was logged
            if process.poll() is not None or time.time() > deadline:
                process.kill()
                pytest.fail("no step logged before the run ended or timed out:\n" + process.communicate()[0][-3000:])
            time.sleep(0.05)
        process.send_signal(signal.SIGTERM)
        output = process.communicate(timeout=600)[0]
        assert process.returncode == 143, output[-3000:]
        done = len(metrics(interrupted))
        assert 1 <= done < steps, output[-3000:]
        assert f"stopped by SIGTERM at step {done}, checkpoint saved" in output
        assert list(checkpoint.manager(str(interrupted)).all_steps()) == [done]  # the SIGTERM save, nothing else

        process = start(args, cache)
        output = finish(process)
        assert f"resumed from step {done} " in output, output[-3000:]
        finish(reference)
    finally:
        stop(reference, process)

    ref_lines, lines = metrics(tmp_path / "reference"), metrics(interrupted)
    assert [line["step"] for line in lines] == list(range(1, steps + 1))  # no step lost or repeated
    for line, ref in zip(lines, ref_lines, strict=True):
        assert without_timing(line) == without_timing(ref), f"step {line['step']} differs from the uninterrupted run"
    step, state = stored_state(interrupted)
    ref_step, ref_state = stored_state(tmp_path / "reference")
    assert step == ref_step == int(state["step"]) == steps
    ours, theirs = flat(state, "state"), flat(ref_state, "state")
    assert ours.keys() == theirs.keys() and any("opt_state" in k for k in ours) and "state['rng']" in ours
    for name, value in theirs.items():
        np.testing.assert_array_equal(ours[name], value, err_msg=name)  # params, optimizer, rng: bitwise on CPU


@pytest.mark.slow  # 4-6 min on 2 busy cores: two 2-process runs (4 start-ups, compiles) and the reference
def test_two_process_run_equals_one_process_on_the_global_batch(data_dir, tmp_path):
    """2 hosts x 4 rows, mesh data=2, trained 2 steps, stopped, resumed to 4 (each host restores its own
    iterator state): params and losses equal one process training on [host 0 rows; host 1 rows], where
    host h's rows come from a pipeline over the records h, h + 2, ... of the split (bitwise on CPU)."""
    workdir, cache = tmp_path / "distributed", str(tmp_path / "compilation_cache")

    def run(steps: int) -> list[str]:
        port = free_port()
        extra = ("--config.train.mesh.data=2", f"--coordinator=127.0.0.1:{port}", "--num_processes=2")
        args = command(data_dir, workdir, steps, 2, *extra)
        processes = [start([*args, f"--process_id={i}"], cache) for i in range(2)]
        try:
            return [finish(p) for p in processes]
        finally:
            stop(*processes)

    run(2)
    assert all("resumed from step 2 " in out for out in run(4))

    out = tmp_path / "reference.npz"
    script = os.path.join(HERE, "distributed_reference_run.py")
    ref = subprocess.run([sys.executable, script, data_dir, "4", str(out)], capture_output=True, text=True, timeout=900)
    assert ref.returncode == 0, ref.stderr[-3000:]
    reference = np.load(out)

    lines = metrics(workdir)  # process 0 writes them
    assert [line["step"] for line in lines] == [1, 2, 3, 4]
    computed = {k.split("/", 1)[1]: v for k, v in reference.items() if k.startswith("metrics/")}
    assert {"loss", "answer_examples", "llm_tokens", "grad_norm"} <= computed.keys()
    for name, values in computed.items():  # loss, counts, grad norm, ...: everything the step computes
        np.testing.assert_array_equal([line[f"train/{name}"] for line in lines], values, err_msg=name)
    for step in (2, 4):
        _, state = stored_state(workdir, step)
        params = flat(state["params"], "params")
        expected = {k.split("/", 1)[1]: reference[k] for k in reference.files if k.startswith(f"step{step}/")}
        assert params.keys() == expected.keys()
        for name, value in expected.items():
            np.testing.assert_array_equal(params[name], value, err_msg=f"step {step}: {name}")


@pytest.mark.slow  # 2.5-3.5 min on 2 busy cores: compiles on two meshes of 8 fake devices
def test_restore_on_another_mesh_continues_with_the_real_data_iterator(data_dir, tmp_path):
    """Saved after 2 steps on (2, 2, 2), restored on (1, 2, 2) into a fresh make_dataset iterator: the next
    3 batches are the uninterrupted run's; the state after them equals the restored-from-memory replay
    bitwise and the original mesh's run to float tolerance."""
    out = tmp_path / "remesh.npz"
    script = os.path.join(HERE, "remesh_continue_run.py")
    run = subprocess.run(
        [sys.executable, script, data_dir, str(tmp_path / "workdir"), str(out)],
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert run.returncode == 0, run.stderr[-3000:]
    r = np.load(out)
    part = lambda prefix: {k[len(prefix) :]: r[k] for k in r.files if k.startswith(prefix)}

    # the iterator: the checkpoint moved the fresh one to where the saving run was
    batches, after_restore = part("uninterrupted/batch"), part("restored/batch")
    assert batches.keys() == after_restore.keys() and "0/input_ids" in batches and "2/pixels" in batches
    for name, value in batches.items():
        np.testing.assert_array_equal(after_restore[name], value, err_msg=name)
    assert not np.array_equal(batches["0/input_ids"], batches["1/input_ids"])  # the batches do differ

    # the state: restored exactly, onto the small mesh
    saved, restored = part("saved."), part("restored_at_save.")
    assert saved.keys() == restored.keys() and int(saved["step"]) == 2
    for name, value in saved.items():
        np.testing.assert_array_equal(restored[name], value, err_msg=name)
    assert bool(r["restored_on_small_mesh"])

    # training on: the restored run is the in-memory replay bitwise (same mesh, same program, same inputs) and
    # the original mesh's run up to reduction order (measured: |diff| <= 3e-8 after 3 steps; a different batch
    # or state moves params by ~lr = 1e-4)
    uninterrupted, trained, replayed = part("uninterrupted."), part("restored."), part("replayed.")
    assert uninterrupted.keys() == trained.keys() == replayed.keys() and int(trained["step"]) == 5
    for name, value in replayed.items():
        np.testing.assert_array_equal(trained[name], value, err_msg=name)
    for name, value in uninterrupted.items():
        if value.dtype.kind == "f":
            np.testing.assert_allclose(trained[name], value, rtol=1e-5, atol=1e-6, err_msg=name)
        else:  # step and rng
            np.testing.assert_array_equal(trained[name], value, err_msg=name)
    np.testing.assert_allclose(r["restored/losses"], r["uninterrupted/losses"], rtol=1e-5)
