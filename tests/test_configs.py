"""Experiment configs load, override, and validate before anything compiles."""

from __future__ import annotations

import importlib.util
import pathlib

import pytest

from stts_jax.configs import model_config, pipeline_config
from stts_jax.models.config import ConfigError

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
    assert pipeline.max_videos_per_row <= model.stts.max_videos_per_row


def test_replication_sweep_is_valid_and_complete(monkeypatch):
    from stts_jax.sweep import load_sweep, plan, run_name

    monkeypatch.chdir(CONFIGS.parent)  # sweep files name configs relative to the repo root
    sweep = load_sweep(str(CONFIGS / "replication.py"))
    planned = plan(sweep["config"], sweep["runs"], sweep["fixed"])
    assert len(planned) == 3 * 12  # 3 seeds x (none, 5 methods at k = 0.5, STTS and random at 3 more ratios)
    assert len(sweep["test_time_scaling"]) == 3 and set(sweep["test_time_scaling"]) <= {
        run_name(r) for r in sweep["runs"]
    }
    assert {c.stts.method for _, c in planned} == {"none", "stts", "random", "heuristic", "stts_no_aux", "fewer_frames"}
    _, config = planned[0]
    assert config.data.families == "moving_color,needle_color" and config.data.max_distractors == 0
    assert config.data.answer_format == "option"
    one_seed = load_sweep(str(CONFIGS / "replication.py"), "seeds=1")
    assert [n for n, _ in plan(one_seed["config"], one_seed["runs"], one_seed["fixed"])] == [n for n, _ in planned[:12]]
    core = load_sweep(str(CONFIGS / "replication.py"), "later_seeds=core")
    names = [n for n, _ in plan(core["config"], core["runs"], core["fixed"])]
    assert names[:12] == [n for n, _ in planned[:12]]  # seed 0: every run, in the full sweep's order
    assert len(names) == 12 + 2 * 4 and set(names) <= {n for n, _ in planned}  # seeds 1-2: four runs each
    assert {r["stts.method"] for r in core["runs"][12:]} == {"none", "stts", "random", "stts_no_aux"}
    assert len(core["test_time_scaling"]) == 3
    with pytest.raises(ConfigError, match="later_seeds"):
        load_sweep(str(CONFIGS / "replication.py"), "later_seeds=some")


def test_bad_values_name_the_field():
    get = load("synthetic")
    with pytest.raises(ConfigError, match="stts.prune_ratio"):
        model_config(get("prune_ratio=1.5"))
    with pytest.raises(ConfigError, match="expected key=value"):
        get("ratio=0.5")
    config = get("")
    config.data.max_videos_per_row = 3
    with pytest.raises(ConfigError, match="data.max_videos_per_row"):
        pipeline_config(config, model_config(config))
