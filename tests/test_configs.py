"""Experiment configs load, override, and validate before anything compiles."""

from __future__ import annotations

import importlib.util
import pathlib

import pytest

from stts_jax.errors import ConfigError
from stts_jax.train.experiment import model_config, pipeline_config

CONFIGS = pathlib.Path(__file__).parent.parent / "configs"


def load(name):
    spec = importlib.util.spec_from_file_location(name, CONFIGS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.get_config


@pytest.mark.parametrize("name", ["synthetic", "manifest"])
def test_configs_build_valid_typed_configs(name):
    config = load(name)("variant=tiny,prune_ratio=0.3")
    model = model_config(config)
    pipeline = pipeline_config(config, model)
    assert model.stts.prune_ratio == 0.3 and pipeline.prune_ratio == 0.3


def test_replication_sweep_is_valid_and_complete(monkeypatch):
    from stts_jax.sweep.runner import BASE, load_sweep, plan
    from stts_jax.train.experiment import run_name

    monkeypatch.chdir(CONFIGS.parent)  # sweep files name configs relative to the repo root
    file = str(CONFIGS / "replication.py")
    names = lambda sweep: [n for n, _ in plan(sweep["config"], sweep["runs"], sweep["fixed"], sweep["base"], "/r")]
    sweep = load_sweep(file)
    planned = plan(sweep["config"], sweep["runs"], sweep["fixed"], sweep["base"], "/r")
    assert len(planned) == 1 + 3 * 14  # the base, then 3 seeds x (none, 5 methods at k = 0.5, 2 x 4 ratios)
    (base_name, base), *fine_tunes = planned
    assert base_name == BASE and base.stts.method == "none" and not base.train.init_from
    assert base.train.steps == base.train.optimizer.total_steps == 800
    assert all(c.train.init_from == "/r/base" and c.train.steps == 100 for _, c in fine_tunes)
    assert base.train.optimizer.learning_rates[-1][1] == 10 * fine_tunes[0][1].train.optimizer.learning_rates[-1][1]
    assert len(sweep["test_time_scaling"]) == 3 and set(sweep["test_time_scaling"]) <= {
        run_name(r) for r in sweep["runs"]
    }
    assert {c.stts.method for _, c in planned} == {"none", "stts", "random", "heuristic", "stts_no_aux", "fewer_frames"}
    assert base.data.families == "moving_color,needle_color" and base.data.max_distractors == 0
    assert base.data.answer_format == "option"
    first = [c for _, c in fine_tunes[:12]]  # the k = 0.5 claims' runs, every seed, come first
    assert {c.stts.method for c in first} == {"none", "stts", "random", "stts_no_aux"}
    assert {c.stts.prune_ratio for c in first} == {0.5} and {c.train.seed for c in first} == {0, 1, 2}
    one_seed = load_sweep(file, "seeds=1")
    assert set(names(one_seed)) == {BASE} | {n for n, c in fine_tunes if c.train.seed == 0}
    core = names(load_sweep(file, "later_seeds=core"))
    assert core[:13] == names(sweep)[:13]  # the base, then the k = 0.5 claims' four runs for every seed
    assert len(core) == 1 + 3 * 4 + 10 and set(core) <= set(names(sweep))  # + seed 0's ten other runs
    with pytest.raises(ConfigError, match="later_seeds"):
        load_sweep(file, "later_seeds=some")
    scenes = plan(*(load_sweep(file, "testbed=scenes")[k] for k in ("config", "runs", "fixed", "base")), "/r")
    assert names(sweep) == [n for n, _ in scenes]  # the same protocol on the scene set's default families
    (_, scene_base), *_ = scenes
    assert (
        scene_base.data.dataset == "scene_video_qa"
        and scene_base.data.families == "moving_color,needle_color,place_color"
    )
    assert scene_base.train.steps == 800 and scene_base.data.answer_format == "option"
    with pytest.raises(ConfigError, match="testbed"):
        load_sweep(file, "testbed=kitchen")


def test_bad_values_name_the_field():
    get = load("synthetic")
    with pytest.raises(ConfigError, match="stts.prune_ratio"):
        model_config(get("prune_ratio=1.5"))
    with pytest.raises(ConfigError, match="expected key=value"):
        get("ratio=0.5")
    config = get("")
    config.data.max_videos_per_row = 0
    with pytest.raises(ConfigError, match="data.max_videos_per_row 0 must be >= 1"):
        pipeline_config(config, model_config(config))


def test_train_values_that_would_lose_work_are_refused_first():
    from stts_jax.train.experiment import training_setup

    get = load("synthetic")
    for field, value, message in [
        ("keep_checkpoints", 0, "would delete every checkpoint"),
        ("checkpoint_every", 0, "train.checkpoint_every 0 must be >= 1"),
        ("steps", 0, "train.steps 0 must be >= 1"),
    ]:
        config = get("")
        config.train[field] = value
        with pytest.raises(ConfigError, match=message):
            training_setup(config)


def test_the_learning_rate_schedule_follows_the_run_length():
    """--config.train.steps=1000 decays over 1000 steps (the schedule once copied the file's 800 at load
    time); a config that fixes total_steps keeps it."""
    from stts_jax.train.experiment import training_setup

    config = load("synthetic")("")
    config.train.steps = 1000
    assert training_setup(config).optimizer.total_steps == 1000
    config.train.optimizer.total_steps = 300
    assert training_setup(config).optimizer.total_steps == 300
