"""The training loop: resume after kill -9 equals an uninterrupted run; SIGTERM saves; shape mismatch refused."""

from __future__ import annotations

import logging
import os
import re
import signal
import subprocess
import sys
import time

import jax
import numpy as np
import pytest
from conftest import ROOT
from conftest import synthetic_config as load_config

from stts_jax.errors import CheckpointError
from stts_jax.train import checkpoint
from stts_jax.train.loop import train


def overrides(data_dir, steps, every):
    return [
        "--config=configs/synthetic.py:variant=tiny,frames=4",
        f"--config.train.steps={steps}",
        f"--config.train.checkpoint_every={every}",
        f"--config.data.data_dir={data_dir}",
        "--config.data.train_examples=40",
        "--config.data.eval_examples=8",
        "--config.data.test_examples=8",
        "--config.data.llm_seq_len=160",
        "--config.train.eval_every=0",
    ]


def cli(workdir, data_dir, steps, every):
    return subprocess.Popen(
        [sys.executable, "-m", "stts_jax.train", *overrides(data_dir, steps, every), f"--workdir={workdir}"],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def final_params(workdir, step=None):
    import orbax.checkpoint as ocp

    mgr = checkpoint.manager(str(workdir))
    step = mgr.latest_step() if step is None else step
    restored = mgr.restore(step, args=ocp.args.Composite(state=ocp.args.StandardRestore()))
    return step, restored["state"]["params"]


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    return str(tmp_path_factory.mktemp("data"))


@pytest.fixture(scope="module")
def reference(data_dir, tmp_path_factory):
    """A run of 6 steps without interruption, checkpoints at 2, 4 and 6."""
    workdir = tmp_path_factory.mktemp("reference")
    train(load_config(data_dir, 6, 2), str(workdir))
    return workdir


def assert_same_final_state(workdir, reference):
    step, params = final_params(workdir)
    ref_step, ref_params = final_params(reference)
    assert step == ref_step == 6
    for a, b in zip(jax.tree.leaves(params), jax.tree.leaves(ref_params), strict=True):
        np.testing.assert_array_equal(a, b)  # bitwise on CPU


# ~100 s (two CLI start-ups and compiles); the default suite keeps the resume's bitwise equality in
# test_a_damaged_latest_checkpoint_falls_back_to_the_one_before, and tests/test_remote_experiment.py (slow)
# SIGKILLs a run on gs://
@pytest.mark.slow
def test_kill9_then_restart_equals_uninterrupted_run(data_dir, reference, tmp_path):
    interrupted = tmp_path / "interrupted"
    process = cli(interrupted, data_dir, 6, 2)
    deadline = time.time() + 300
    while not (interrupted / "checkpoints" / "2").exists():  # a finished (renamed) checkpoint
        assert process.poll() is None and time.time() < deadline, (
            process.stdout.read()[-2000:] if process.stdout else ""
        )
        time.sleep(0.2)
    os.kill(process.pid, signal.SIGKILL)
    process.wait()
    restarted = cli(interrupted, data_dir, 6, 2)
    output = restarted.communicate(timeout=600)[0]
    assert restarted.returncode == 0, output[-2000:]
    assert "resumed from step" in output
    assert_same_final_state(interrupted, reference)


def test_a_damaged_latest_checkpoint_falls_back_to_the_one_before(data_dir, reference, tmp_path):
    """The reference run's workdir as a crash during its step-6 save would leave it, with step 4's files
    also truncated: the resume reports step 4, moves it aside, resumes from step 2, and ends where the
    uninterrupted run ended; metrics.jsonl lists each step once."""
    import json
    import shutil

    workdir = tmp_path / "run"
    shutil.copytree(reference, workdir)
    shutil.rmtree(workdir / "checkpoints" / "6")
    for path in (workdir / "checkpoints" / "4").rglob("*"):
        if path.is_file():
            path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    train(load_config(data_dir, 6, 2), str(workdir))
    assert_same_final_state(workdir, reference)
    assert (workdir / "damaged_checkpoints" / "4").is_dir()
    rows = [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows if "train/loss" in r] == [1, 2, 3, 4, 5, 6]


def test_a_workdir_keeps_one_experiment(data_dir, reference, tmp_path, caplog):
    """Resuming with a config that changes the experiment is refused, naming the fields, and writes
    nothing; more steps are allowed."""
    import shutil

    from stts_jax.errors import ConfigError

    workdir = tmp_path / "run"
    shutil.copytree(reference, workdir)
    saved = (workdir / "config.json").read_bytes()
    changed = load_config(data_dir, 6, 2, stts__prune_ratio=0.3, train__seed=1)
    with pytest.raises(ConfigError, match=r"stts.prune_ratio: 0.5 there, 0.3 now; train.seed: 0 there, 1 now"):
        train(changed, str(workdir))
    assert (workdir / "config.json").read_bytes() == saved
    assert sorted(int(p.name) for p in (workdir / "checkpoints").iterdir()) == [2, 4, 6]
    with caplog.at_level(logging.INFO, logger="stts_jax.train.loop"):
        metrics = train(load_config(data_dir, 7, 2), str(workdir))  # one more step: the same experiment
    assert metrics["step"] == 7
    # the start-of-run line: processes, devices, mesh, parameters per optimizer group, the config's hash
    line = next(r.getMessage() for r in caplog.records if r.getMessage().startswith("run: "))
    assert re.search(r"1 process\(es\), 1 cpu device\(s\).*mesh \{'data': 1, 'fsdp': 1, 'tensor': 1\}", line), line
    assert re.search(r"scorer/\.\* [0-9.]+ M, vit/\.\* [0-9.]+ M.*config sha256 [0-9a-f]{12}$", line), line


def test_preloaded_batches_are_the_runs_first_batches_repeated(data_dir, reference, tmp_path):
    """train.preload_batches=2 (input held on the devices, for measuring the input's cost) trains on the
    real first two batches, bitwise as the reference run did, and then repeats them."""
    metrics = train(load_config(data_dir, 3, 2, train__preload_batches=2), str(tmp_path))
    assert metrics["step"] == 3
    preloaded, real = (jax.tree.leaves(final_params(run, 2)[1]) for run in (tmp_path, reference))
    for a, b in zip(preloaded, real, strict=True):
        np.testing.assert_array_equal(a, b)


def test_sigint_saves_a_checkpoint_and_exits_cleanly(data_dir, tmp_path):
    """Ctrl-C (SIGINT) stops a run as SIGTERM does: a checkpoint of the last step, exit 143 (the resume of a
    SIGTERM-stopped run is checked against an uninterrupted one in test_resume_reference)."""
    process = cli(tmp_path, data_dir, 1000, 1000)
    deadline = time.time() + 300
    metrics = tmp_path / "metrics.jsonl"
    train_lines = lambda: [line for line in metrics.read_text().splitlines() if "train/loss" in line]
    while not metrics.exists() or len(train_lines()) < 2:
        assert process.poll() is None and time.time() < deadline
        time.sleep(0.2)
    process.send_signal(signal.SIGINT)
    output = process.communicate(timeout=300)[0]
    assert process.returncode == 143 and "checkpoint saved; rerun the same command" in output, output[-2000:]
    steps_done = len(train_lines())
    assert checkpoint.manager(str(tmp_path)).latest_step() == steps_done < 1000


def test_workdir_with_a_checkpoint_of_another_model_is_refused(data_dir, reference, tmp_path):
    """Even without its config.json (which would refuse the change first), a checkpoint of another model
    shape is refused."""
    import shutil

    shutil.copytree(reference, tmp_path / "run")
    (tmp_path / "run" / "config.json").unlink()
    with pytest.raises(CheckpointError, match="another model shape"):
        train(load_config(data_dir, 8, 2, stts__method="random"), str(tmp_path / "run"))  # no scorer params


def test_init_from_hf_checkpoint_validation_and_tensorboard(data_dir, tmp_path):
    """Starts from a transformers-format Molmo2 directory (scorer fresh), trains the scorer only,
    evaluates on the validation split, and writes the same scalars to TensorBoard and metrics.jsonl;
    then a run without a scorer starts from that run's workdir."""
    import dataclasses
    import json

    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from stts_jax.convert.hf import save_molmo2
    from stts_jax.train.experiment import model_config
    from stts_jax.vlm.model import param_shapes

    config = load_config(data_dir, 2, 2, train__eval_every=1, train__eval_batches=2)
    config.train.optimizer.freeze = ["(vit|connector|text|lm_head)/.*"]
    backbone = dataclasses.replace(
        model_config(config), stts=dataclasses.replace(model_config(config).stts, method="none")
    )
    rng = np.random.default_rng(3)
    pretrained = jax.tree.map(lambda x: (0.02 * rng.standard_normal(x.shape)).astype(x.dtype), param_shapes(backbone))
    save_molmo2(backbone, pretrained, str(tmp_path / "hf"))
    config.train.init_from = str(tmp_path / "hf")
    train(config, str(tmp_path / "run"))

    step, params = final_params(tmp_path / "run")
    assert step == 2 and set(params) == set(pretrained) | {"scorer"}
    for a, b in zip(jax.tree.leaves({k: params[k] for k in pretrained}), jax.tree.leaves(pretrained), strict=True):
        np.testing.assert_array_equal(a, b)  # loaded, then frozen
    lines = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    validation = [line for line in lines if "validation/answer_accuracy" in line]
    assert [line["step"] for line in validation] == [1, 2]
    assert all(line["validation/answer_examples"] > 0 and line["validation/llm_tokens"] > 0 for line in validation)
    events = EventAccumulator(str(tmp_path / "run"), size_guidance={"images": 0, "histograms": 0}).Reload()
    assert {"train/loss", "train/tokens_per_second", "validation/answer_accuracy"} <= set(events.Tags()["scalars"])
    logged = [e.value for e in events.Scalars("validation/answer_loss")]
    np.testing.assert_allclose(logged, [line["validation/answer_loss"] for line in validation], rtol=1e-6)
    # every group's learning rate, by hand: linear warm-up from 0 over warmup_steps to the group's peak
    train_rows = [line for line in lines if "train/loss" in line]
    warmup, peaks = config.train.optimizer.warmup_steps, dict(config.train.optimizer.learning_rates)
    for row in train_rows:
        assert row["train/learning_rate/scorer"] == pytest.approx(peaks["scorer/.*"] * (row["step"] - 1) / warmup)
        assert row["train/learning_rate/text|lm_head"] == pytest.approx(
            peaks["(text|lm_head)/.*"] * (row["step"] - 1) / warmup
        )
    # the compile is reported once, apart from the steps' times
    assert "train/compile_seconds" in train_rows[0] and "train/compile_seconds" not in train_rows[1]
    assert train_rows[0]["train/compile_seconds"] > train_rows[0]["train/step_seconds"]
    # at each evaluation: pictures of the kept windows and the histogram of the window scores
    assert [e.step for e in events.Images("validation/kept_windows/row0")] == [1, 2]
    assert [e.step for e in events.Histograms("validation/window_scores")] == [1, 2]

    # another run's workdir (its latest checkpoint); a model without a scorer leaves the run's scorer out
    config_random = load_config(data_dir, 1, 1, stts__method="random")
    config_random.train.optimizer.freeze = [".*"]
    config_random.train.init_from = str(tmp_path / "run")
    train(config_random, str(tmp_path / "random"))
    _, params = final_params(tmp_path / "random")
    assert set(params) == set(pretrained)
    for a, b in zip(jax.tree.leaves(params), jax.tree.leaves(pretrained), strict=True):
        np.testing.assert_array_equal(a, b)

    other = dataclasses.replace(backbone, text=dataclasses.replace(backbone.text, intermediate_size=48))
    save_molmo2(other, jax.tree.map(lambda x: np.zeros(x.shape, x.dtype), param_shapes(other)), str(tmp_path / "other"))
    config.train.init_from = str(tmp_path / "other")
    with pytest.raises(CheckpointError, match="does not fit this model"):
        train(config, str(tmp_path / "run2"))


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow  # ~2 min: four process start-ups and compiles; `python -m pytest -q -m slow` runs it
def test_two_processes_with_jax_distributed_train_save_and_restore(data_dir, tmp_path):
    """A real multi-host run: 2 local processes joined on 127.0.0.1, each reading its own data shard,
    batch rows over the 'data' axis across them; then both resume from the shared checkpoint."""

    def run(steps):
        port = _free_port()
        processes = [
            subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "stts_jax.train",
                    *overrides(data_dir, steps, 2),
                    "--config.train.mesh.data=2",
                    f"--workdir={tmp_path}",
                    f"--coordinator=127.0.0.1:{port}",
                    "--num_processes=2",
                    f"--process_id={i}",
                ],
                cwd=ROOT,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                text=True,
                env={**os.environ, "JAX_PLATFORMS": "cpu"},
            )
            for i in range(2)
        ]
        outputs = [p.communicate(timeout=600)[0] for p in processes]
        for p, out in zip(processes, outputs, strict=True):
            assert p.returncode == 0, out[-2000:]
        return outputs

    run(2)
    data_files = sorted(os.listdir(tmp_path / "checkpoints" / "2" / "data"))
    assert len([f for f in data_files if f.startswith("process_")]) == 2  # one iterator state per host
    outputs = run(4)
    assert all("resumed from step 2" in out for out in outputs)
    assert checkpoint.manager(str(tmp_path)).latest_step() == 4


def test_metrics_on_gcs_are_uploaded_whole_and_a_resume_drops_later_rows(gcs, tmp_path):
    """On gs:// (the GCS emulator) metrics.jsonl and the event file are complete after close, and a writer
    resuming at step 2 drops the rows of steps 3-4 before writing them again."""
    import json

    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from stts_jax.train.metrics import MetricsWriter

    workdir = "gs://bucket/run_metrics"
    writer = MetricsWriter(workdir, 0)
    for step in range(1, 5):
        writer.write(step, {"loss": 1.0 / step}, "train")
    writer.close()
    writer = MetricsWriter(workdir, 2)
    for step in (3, 4):
        writer.write(step, {"loss": 10.0 * step}, "train")
    writer.close()
    rows = [json.loads(line) for line in gcs.cat(f"{workdir}/metrics.jsonl").decode().splitlines()]
    assert [(r["step"], r["train/loss"]) for r in rows] == [(1, 1.0), (2, 0.5), (3, 30.0), (4, 40.0)]
    local = tmp_path / "events"
    gcs.get(f"{workdir}/", str(local), recursive=True)
    events = EventAccumulator(str(local)).Reload()
    assert [(e.step, e.value) for e in events.Scalars("train/loss")] == [(1, 1.0), (2, 0.5), (3, 30.0), (4, 40.0)]
