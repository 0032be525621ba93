"""Sweeps: grid parsing and validation, a tiny sweep run end to end, aggregation and plots, pod commands."""

from __future__ import annotations

import csv
import os
import shlex
import subprocess
import sys

import jax
import pytest
from conftest import ROOT

from stts_jax.errors import ConfigError
from stts_jax.sweep.aggregate import aggregate
from stts_jax.sweep.runner import BASE, SweepPreempted, parse_grid, plan, pod_commands, run_sweep, stages
from stts_jax.train.experiment import run_name

CONFIG = os.path.join(ROOT, "configs", "synthetic.py") + ":variant=tiny,frames=4"


def test_grid_is_the_cartesian_product():
    runs = parse_grid("stts.method=stts,random; stts.prune_ratio=0.3,0.5 ;train.seed=0")
    assert len(runs) == 4 and runs[1] == {"stts.method": "stts", "stts.prune_ratio": 0.5, "train.seed": 0}
    assert run_name(runs[1]) == "method=stts,k=0.5,seed=0"


def test_bad_grid_values_are_refused_before_anything_runs():
    with pytest.raises(ConfigError, match="method=stts,k=1.5.*prune_ratio"):
        plan(CONFIG, parse_grid("stts.method=stts;stts.prune_ratio=0.5,1.5"))
    with pytest.raises(ConfigError, match="no field 'stts.ratio'"):
        plan(CONFIG, parse_grid("stts.ratio=0.5"))
    with pytest.raises(ConfigError, match="method=magic"):
        plan(CONFIG, parse_grid("stts.method=magic"))
    with pytest.raises(ConfigError, match="expected key=v1,v2"):
        parse_grid("stts.method")
    with pytest.raises(ConfigError, match="repeats runs"):
        plan(CONFIG, [{"train.seed": 0}, {"train.seed": 0}])


def test_grids_that_would_lose_a_value_or_train_in_the_root_are_refused():
    with pytest.raises(ConfigError, match="grid axis 'stts.prune_ratio' appears twice; .* stts.prune_ratio=0.3,0.5$"):
        parse_grid("stts.prune_ratio=0.3;stts.prune_ratio=0.5")  # the product would keep only 0.5
    for spec in (";;;", "", " ; "):  # one run with no overrides: its workdir would be the sweep root
        with pytest.raises(ConfigError, match="has no axis"):
            parse_grid(spec)
    with pytest.raises(ConfigError, match="expected key=v1,v2"):
        parse_grid("stts.method=")
    with pytest.raises(ConfigError, match="expected key=v1,v2"):
        parse_grid("=0.3,0.5")
    with pytest.raises(ConfigError, match="'stts.prune_ratio=0.3,' has an empty value"):
        parse_grid("stts.prune_ratio=0.3,")
    assert parse_grid(";stts.prune_ratio=0.3;;train.seed=0,1;") == [  # empty axes are ignored
        {"stts.prune_ratio": 0.3, "train.seed": 0},
        {"stts.prune_ratio": 0.3, "train.seed": 1},
    ]
    with pytest.raises(ConfigError, match="a run without overrides, which would train in the sweep's root"):
        stages([{"train.seed": 0}, {}])  # a sweep file's runs
    with pytest.raises(ConfigError, match="no runs"):
        stages([])


def test_every_run_is_checked_as_training_checks_it_before_the_first_trains():
    with pytest.raises(ConfigError, match="run train.mesh.fsdp=0: train.mesh .* every axis needs a size >= 1"):
        plan(CONFIG, parse_grid("train.mesh.fsdp=1,0"))
    with pytest.raises(ConfigError, match="run train.mesh.fsdp=2: mesh .* does not match the 1 devices"):
        plan(CONFIG, parse_grid("train.mesh.fsdp=1,2"), devices=jax.devices()[:1])
    assert len(plan(CONFIG, parse_grid("train.mesh.fsdp=1,2"))) == 2  # pod commands: the pod's devices count
    with pytest.raises(
        ConfigError, match="run train.mesh.fsdp=two: train.mesh.fsdp='two', but that field takes .* int"
    ):
        plan(CONFIG, parse_grid("train.mesh.fsdp=1,two"))
    with pytest.raises(ConfigError, match="run train.accumulate_steps=3: data.batch_size 4 is not divisible"):
        plan(CONFIG, parse_grid("train.accumulate_steps=1,3"))
    with pytest.raises(ConfigError, match="run train.keep_checkpoints=0: .*would delete every checkpoint"):
        plan(CONFIG, parse_grid("train.keep_checkpoints=1,0"))


def test_a_bad_mesh_in_the_second_run_stops_the_sweep_command_before_the_first_trains(tmp_path):
    """The real command, on one CPU device. Were the second run checked only when its turn came, the first
    (one step, 8 examples) would train and leave a checkpoint under the root."""
    root = tmp_path / "sweep"
    grid = f"train.mesh.fsdp=1,2;train.steps=1;train.eval_every=0;data.data_dir={tmp_path / 'data'}"
    grid += ";data.train_examples=8;data.eval_examples=4;data.test_examples=4"
    env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
    result = subprocess.run(
        [sys.executable, "-m", "stts_jax.sweep", f"--config={CONFIG}", f"--grid={grid}", f"--root={root}"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 1 and "Traceback" not in result.stderr, result.stderr[-3000:]
    assert "error: run train.mesh.fsdp=2," in result.stderr
    assert "mesh data x fsdp x tensor = 1 x 2 x 1 = 2 does not match the 1 devices" in result.stderr
    assert not [d for d, _, _ in os.walk(tmp_path) if os.path.basename(d) == "checkpoints"]
    assert "[1/2]" not in result.stdout  # no run started


def test_pod_commands_train_on_every_host_then_evaluate():
    runs = parse_grid("stts.method=stts,random;stts.prune_ratio=0.5")
    lines = pod_commands(CONFIG, runs, "gs://bucket/sweep")
    assert len(lines) == 4
    train = shlex.split(lines[0])
    assert train[:3] == ["python", "-m", "stts_jax.train"] and "--distributed" in train
    assert "--workdir=gs://bucket/sweep/method=stts,k=0.5" in train and "--config.stts.prune_ratio=0.5" in train
    assert shlex.split(lines[1]) == [
        "python",
        "-m",
        "stts_jax.evaluate",
        "--checkpoint=gs://bucket/sweep/method=stts,k=0.5",
    ]


def test_a_base_run_trains_first_and_every_run_starts_from_it():
    runs = parse_grid("stts.method=stts,random;stts.prune_ratio=0.5")
    fixed = {"train.steps": 10}
    base = {"stts.method": "none", "train.steps": 40}
    named = stages(runs, fixed, base, "gs://b/sweep/")
    assert [n for n, _ in named] == [BASE, "method=stts,k=0.5", "method=random,k=0.5"]
    assert named[0][1] == {"train.steps": 40, "stts.method": "none"}  # the base's own settings win
    assert all(o["train.init_from"] == "gs://b/sweep/base" and o["train.steps"] == 10 for _, o in named[1:])
    planned = plan(CONFIG, runs, fixed, base, "/r")
    assert planned[0][1].train.init_from == "" and planned[1][1].train.init_from == "/r/base"
    lines = pod_commands(CONFIG, runs, "gs://b/sweep", fixed, base)
    assert len(lines) == 6 and "--workdir=gs://b/sweep/base" in shlex.split(lines[0])
    assert "--config.train.init_from=gs://b/sweep/base" in shlex.split(lines[2])


def test_runs_started_from_a_base_count_its_steps(tmp_path):
    from stts_jax.sweep.aggregate import training_steps

    (tmp_path / "config.json").write_text('{"train": {"steps": 800, "init_from": ""}}')
    assert training_steps({"train": {"steps": 800, "init_from": ""}}) == "800"
    assert training_steps({"train": {"steps": 100, "init_from": str(tmp_path)}}) == "800+100"
    assert training_steps({"train": {"steps": 100, "init_from": str(tmp_path / "gone")}}) == "?+100"


def test_questions_whose_object_windows_were_all_pruned_are_counted():
    from stts_jax.sweep.aggregate import lost_objects

    predictions = [
        {"family": "needle", "answer": 1, "generate": 1, "kept_object_share": 0.0},
        {"family": "needle", "answer": 1, "generate": 0, "kept_object_share": 0.0},
        {"family": "needle", "answer": 2, "generate": 2, "kept_object_share": 0.5},
        {"family": "needle", "answer": 2, "generate": 2, "kept_object_share": 1.0},
        {"family": "moving", "answer": 0, "generate": 0, "kept_object_share": 0.3},
        {"family": "count", "answer": 0, "generate": 0},  # unpruned: no share
    ]
    result = {"families": {"needle": {}, "moving": {}, "count": {}}, "predictions": predictions}
    assert lost_objects(result) == {"lost/needle": 0.5, "lost_accuracy/needle": 0.5, "lost/moving": 0.0}


def test_a_preempted_run_stops_the_sweep_before_anything_is_evaluated(tmp_path, monkeypatch):
    import stts_jax.sweep.runner as runner

    trained = []
    monkeypatch.setattr(
        runner, "train", lambda config, workdir, progress: trained.append(workdir) or {"preempted": True}
    )
    runs = parse_grid("stts.method=none,random")
    with pytest.raises(SweepPreempted, match="rerun the same command"):
        run_sweep(CONFIG, runs, str(tmp_path), progress=False)
    assert len(trained) == 1  # the second run never started
    assert not any(f.startswith("eval_") for _, _, files in os.walk(tmp_path) for f in files)


@pytest.mark.slow  # ~1 min; notebooks/ablation.ipynb (tests/test_notebooks.py) runs and aggregates a sweep by default
def test_a_tiny_sweep_runs_resumes_and_aggregates(tmp_path):
    runs = [{"stts.method": "none"}, {"stts.method": "random", "stts.prune_ratio": 0.5}]
    fixed = {"train.steps": 3, "train.eval_every": 0, "data.data_dir": str(tmp_path / "data")}
    fixed.update({"data.train_examples": 24, "data.eval_examples": 6, "data.test_examples": 12})
    sweep = lambda: run_sweep(CONFIG, runs, str(tmp_path / "sweep"), [run_name(runs[1])], fixed)
    names = sweep()
    assert names == ["method=none", "method=random,k=0.5"]
    result = tmp_path / "sweep" / names[1] / "eval_test_tts.json"
    stamp = result.stat().st_mtime_ns
    sweep()
    assert result.stat().st_mtime_ns == stamp  # finished work is not redone

    table = aggregate(str(tmp_path / "sweep"))
    with open(tmp_path / "sweep" / "runs.csv") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 3  # two runs + the test-time-scaled evaluation
    frames = sorted(int(r["frames"]) for r in rows)
    assert frames == [4, 4, 8]  # k = 0.5 doubles the frames for the same kept tokens
    flops = {r["frames"] + r["method"]: float(r["forward_flops"]) for r in rows}
    assert flops["8random"] > flops["4random"]  # at tiny sizes the packed path costs more than it saves
    assert "| none | 0 |" in table and "| random | 0.5 | 1 | 8 |" in table
    for png in ("accuracy_vs_ratio.png", "accuracy_vs_flops.png"):
        assert (tmp_path / "sweep" / png).stat().st_size > 1000
