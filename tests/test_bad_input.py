"""Bad input to the evaluate, aot and sweep.aggregate commands: one line (`error: ...`, exit 1) that names the
problem and the fix, no traceback, and nothing written. The commands run as a user runs them (a subprocess
each, ~5 s of imports); the cases around them call the same functions in this process."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
from conftest import ROOT

from stts_jax.errors import CheckpointError, DataError
from stts_jax.evaluate.__main__ import checkpoint_kind
from stts_jax.sweep.aggregate import collect


def command(argv: list[str]) -> str:
    """Runs `python argv` in the repository on this host's one CPU device; asserts that it failed with one
    `error:` line and no traceback, and returns that line."""
    # TPU_LIBRARY_PATH: set in this process by `import libtpu`, it would show the child a libtpu it cannot import
    env = {k: v for k, v in os.environ.items() if k not in ("XLA_FLAGS", "TPU_LIBRARY_PATH")}
    result = subprocess.run([sys.executable, *argv], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 1, result.stderr[-3000:]
    assert "Traceback" not in result.stderr, result.stderr[-3000:]
    errors = [line for line in result.stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1, result.stderr[-3000:]
    return errors[0]


def test_evaluate_names_what_the_checkpoint_folder_is_and_what_to_pass(tmp_path):
    empty, results = tmp_path / "empty", tmp_path / "results.json"
    empty.mkdir()
    line = command(["-m", "stts_jax.evaluate", f"--checkpoint={empty}", f"--json={results}"])
    assert f"--checkpoint={empty} is neither a training workdir (no checkpoints/) nor an export" in line
    assert (
        "--workdir of a `python -m stts_jax.train` run" in line
        and "--out folder of `python -m stts_jax.export`" in line
    )
    assert not results.exists()

    (tmp_path / "file").write_text("")
    with pytest.raises(CheckpointError, match="is a file, not a folder; pass the --workdir"):
        checkpoint_kind(str(tmp_path / "file"))
    with pytest.raises(CheckpointError, match="does not exist; pass the --workdir"):
        checkpoint_kind(str(tmp_path / "missing"))
    started = tmp_path / "started"
    started.mkdir()
    (started / "config.json").write_text("{}")  # what a run writes before its first checkpoint
    with pytest.raises(
        CheckpointError, match="holds config.json but neither checkpoints/ .*: a training run that saved no step"
    ):
        checkpoint_kind(str(started))
    (started / "checkpoints").mkdir()
    assert checkpoint_kind(str(started)) == "workdir"
    hf, orbax = tmp_path / "hf", tmp_path / "orbax"
    (orbax / "params").mkdir(parents=True)
    hf.mkdir()
    (hf / "config.json").write_text("{}")
    (hf / "model.safetensors").write_bytes(b"")
    assert checkpoint_kind(str(hf)) == checkpoint_kind(str(orbax)) == "export"


def test_aot_without_libtpu_says_how_to_install_it(tmp_path):
    """libtpu made unimportable (as on a machine without the `jax[tpu]` extra), the rest of the command as is."""
    report = tmp_path / "aot.json"
    argv = ["stts_jax.aot", "--config=configs/synthetic.py:variant=tiny", "--topology=v5e:2x2", f"--json={report}"]
    simulate = (
        "import runpy, sys; sys.modules['libtpu'] = None; "  # `import libtpu` raises ImportError, as when absent
        f"sys.argv = {argv!r}; runpy.run_module('stts_jax.aot', run_name='__main__', alter_sys=True)"
    )
    line = command(["-c", simulate])
    assert line.startswith("error: libtpu is not installed")
    assert "pip install 'jax[tpu]'" in line and "pip install -e '.[tpu]'" in line
    assert not report.exists()


def sweep_run(root, name: str, result: dict | str) -> str:
    """A run folder of a finished sweep: the run's config.json and its eval_test.json (`result`, or text)."""
    run_dir = root / name
    run_dir.mkdir(parents=True)
    config = {"stts": {"method": "random", "prune_ratio": 0.5, "layer": 1}, "train": {"seed": 0, "steps": 3}}
    (run_dir / "config.json").write_text(json.dumps(config))
    (run_dir / "metrics.jsonl").write_text('{"step": 3, "train/step_seconds": 0.25}\n')
    (run_dir / "eval_test.json").write_text(result if isinstance(result, str) else json.dumps(result))
    return str(run_dir / "eval_test.json")


def test_aggregate_names_a_broken_result_file_and_how_to_redo_it(tmp_path):
    result = {
        "frames_per_example": 4.0,
        "test_time_scaling": False,
        "accuracy": {"generate": 0.5, "likelihood": 0.5},
        "vision_tokens_per_example": 18,
        "forward_flops": 1e9,
        "families": {"count": {"generate": 0.5}},
        "predictions": [],
    }
    sweep_run(tmp_path, "method=random,k=0.3", result)
    broken = sweep_run(tmp_path, "method=random,k=0.5", json.dumps(result)[:40])  # a copy cut short
    line = command(["-m", "stts_jax.sweep.aggregate", f"--root={tmp_path}"])
    assert line.startswith(f"error: {broken} is not valid JSON")
    assert f"delete {broken} and run the sweep command again" in line and f"--root={tmp_path}" in line
    assert "evaluates this one again" in line
    assert sorted(os.listdir(tmp_path)) == ["method=random,k=0.3", "method=random,k=0.5"]  # no runs.csv, no plots

    os.remove(broken)
    assert len(collect(str(tmp_path))) == 1
    del result["forward_flops"]  # written by another version
    old = sweep_run(tmp_path, "method=random,k=0.7", result)
    with pytest.raises(DataError, match=f"{old} or .*config.json lacks the field 'forward_flops'.*delete {old}"):
        collect(str(tmp_path))
    run_dir = tmp_path / "method=random,k=0.7"
    (run_dir / "metrics.jsonl").write_text('{"step": 3, "train/step_sec')  # the training was killed mid-line
    with pytest.raises(DataError, match=f"metrics.jsonl gives no step time .*delete {run_dir} and run the sweep"):
        collect(str(tmp_path))
    os.remove(run_dir / "config.json")
    with pytest.raises(DataError, match="config.json is missing; python -m stts_jax.train writes it: put back"):
        collect(str(tmp_path))


def test_a_sweep_file_with_a_grid_is_refused_before_anything_runs(tmp_path):
    sweep = ["-m", "stts_jax.sweep", "--sweep=configs/replication.py", "--grid=train.seed=0,1"]
    line = command([*sweep, f"--root={tmp_path}"])
    assert "drop --grid/--config" in line
    assert not any(tmp_path.iterdir())


def test_a_damaged_experiment_record_is_named_not_a_json_traceback(tmp_path):
    from stts_jax.train import checkpoint

    (tmp_path / "config.json").write_text('{"model": {"variant": "ti')  # cut short
    with pytest.raises(CheckpointError, match="config.json is not valid JSON .* new --workdir"):
        checkpoint.run_config(str(tmp_path))


def test_step_times_skip_a_last_line_cut_short_and_name_a_broken_one(tmp_path):
    from stts_jax.train.metrics import train_series

    rows = ['{"step": 1, "train/step_seconds": 0.5}', '{"step": 2, "train/step_seconds": 0.25}']
    (tmp_path / "metrics.jsonl").write_text("\n".join(rows) + '\n{"step": 3, "train/st')
    assert train_series(str(tmp_path), "step_seconds") == [0.5, 0.25]
    (tmp_path / "metrics.jsonl").write_text('{"step": 1, "tr\n' + rows[1] + "\n")
    with pytest.raises(DataError, match="line 1 is not JSON"):
        train_series(str(tmp_path), "step_seconds")
