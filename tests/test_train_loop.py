"""The training loop: resume after kill -9 equals an uninterrupted run; SIGTERM saves; shape mismatch refused."""

from __future__ import annotations

import os
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


def final_params(workdir):
    import orbax.checkpoint as ocp

    mgr = checkpoint.manager(str(workdir))
    step = mgr.latest_step()
    restored = mgr.restore(step, args=ocp.args.Composite(state=ocp.args.StandardRestore()))
    return step, restored["state"]["params"]


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    return str(tmp_path_factory.mktemp("data"))


def test_kill9_then_restart_equals_uninterrupted_run(data_dir, tmp_path):
    train(load_config(data_dir, 6, 2), str(tmp_path / "reference"))
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
    step, params = final_params(interrupted)
    ref_step, ref_params = final_params(tmp_path / "reference")
    assert step == ref_step == 6
    for a, b in zip(jax.tree.leaves(params), jax.tree.leaves(ref_params), strict=True):
        np.testing.assert_array_equal(a, b)  # bitwise on CPU


def test_sigterm_saves_a_checkpoint_and_exits_cleanly(data_dir, tmp_path):
    process = cli(tmp_path, data_dir, 1000, 1000)
    deadline = time.time() + 300
    metrics = tmp_path / "metrics.jsonl"
    train_lines = lambda: [line for line in metrics.read_text().splitlines() if "train/loss" in line]
    while not metrics.exists() or len(train_lines()) < 2:
        assert process.poll() is None and time.time() < deadline
        time.sleep(0.2)
    process.send_signal(signal.SIGTERM)
    output = process.communicate(timeout=300)[0]
    assert process.returncode == 143 and "checkpoint saved; rerun the same command" in output, output[-2000:]
    steps_done = len(train_lines())
    assert checkpoint.manager(str(tmp_path)).latest_step() == steps_done < 1000


def test_workdir_with_a_checkpoint_of_another_model_is_refused(data_dir, tmp_path):
    train(load_config(data_dir, 2, 2), str(tmp_path))
    with pytest.raises(CheckpointError, match="another model shape"):
        train(load_config(data_dir, 4, 2, stts__method="random"), str(tmp_path))  # no scorer params


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
    events = EventAccumulator(str(tmp_path / "run")).Reload()
    assert {"train/loss", "train/tokens_per_second", "validation/answer_accuracy"} <= set(events.Tags()["scalars"])
    logged = [e.value for e in events.Scalars("validation/answer_loss")]
    np.testing.assert_allclose(logged, [line["validation/answer_loss"] for line in validation], rtol=1e-6)

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
