"""Sweeps: grid parsing and validation, a tiny sweep run end to end, aggregation and plots, pod commands."""

from __future__ import annotations

import csv
import os
import shlex

import pytest
from conftest import ROOT

from stts_jax.errors import ConfigError
from stts_jax.sweep.aggregate import aggregate
from stts_jax.sweep.runner import BASE, SweepPreempted, parse_grid, plan, pod_commands, run_name, run_sweep, stages

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
