"""Ablation sweeps: a grid (or a sweep file's list) of runs over one experiment config, trained and
evaluated one after another (resumable), or printed as pod commands; `aggregate` tabulates and plots.

A run is a dict of dotted config overrides ({"stts.method": "stts", "stts.prune_ratio": 0.5,
"train.seed": 0}); its directory name spells them. Each run directory holds the training workdir
and `eval_test.json` (+ `eval_test_tts.json` with test-time scaling), which `aggregate` reads.
A sweep may name a `base` run: trained first (in ROOT/base), every other run starts from its final
parameters (`train.init_from`), as the paper fine-tunes one pretrained model per method.
"""

from __future__ import annotations

import copy
import itertools
import json
import os
import shlex
from collections.abc import Mapping, Sequence
from typing import Any

import jax
import ml_collections

from stts_jax.bench.flops import abstract_batch, forward_flops, prompt_length
from stts_jax.data.sources import source
from stts_jax.errors import ConfigError, TrainingError
from stts_jax.evaluate.multiple_choice import evaluate, scaled_data, scaled_frames
from stts_jax.train.checkpoint import restore_params
from stts_jax.train.command import train_command
from stts_jax.train.experiment import load_config_file, load_python_file, model_config, run_name, training_setup
from stts_jax.train.loop import train
from stts_jax.train.sharding import MeshConfig, make_mesh

BASE = "base"  # the directory of a sweep's shared starting run


def run_dir(root: str, name: str) -> str:
    """A run's workdir under the sweep's root (local or gs://)."""
    return f"{root.rstrip('/')}/{name}"


def parse_grid(spec: str) -> list[dict[str, Any]]:
    """ "stts.method=stts,random;stts.prune_ratio=0.3,0.5" -> the cartesian product as override dicts. Empty
    axes (";;", a trailing ";") are ignored; a grid without axes, a repeated key, an axis without a key or
    with an empty value is refused, naming it."""
    axes: dict[str, list[str]] = {}
    for part in filter(None, (p.strip() for p in spec.split(";"))):
        key, sep, values = (text.strip() for text in part.partition("="))
        if not sep or not key or not values:
            raise ConfigError(f"grid axis {part!r}: expected key=v1,v2,... (e.g. stts.prune_ratio=0.3,0.5)")
        items = [v.strip() for v in values.split(",")]
        if "" in items:
            raise ConfigError(f"grid axis {part!r} has an empty value; remove the extra comma.")
        if key in axes:
            merged = ",".join(axes[key] + items)
            raise ConfigError(f"grid axis {key!r} appears twice; give it once with every value: {key}={merged}")
        axes[key] = items
    if not axes:
        raise ConfigError(
            f"--grid={spec!r} has no axis, which would train one run in the sweep's root; write key=v1,v2;..."
        )
    values = [[_literal(v) for v in items] for items in axes.values()]
    return [dict(zip(axes, combo, strict=True)) for combo in itertools.product(*values)]


def _literal(text: str) -> Any:
    for cast in (int, float):
        try:
            return cast(text)
        except ValueError:
            pass
    return text


def apply(
    config: ml_collections.ConfigDict, overrides: Mapping[str, Any], name: str | None = None
) -> ml_collections.ConfigDict:
    """A copy of `config` with the overrides set, or a ConfigError naming the run and the field."""
    name = run_name(overrides) if name is None else name
    config = copy.deepcopy(config)
    for key, value in overrides.items():
        *sections, field = key.split(".")
        node = config
        for section in sections:
            if section not in node:
                raise ConfigError(f"run {name}: config has no section {section!r} (in {key!r}).")
            node = node[section]
        if field not in node:
            raise ConfigError(f"run {name}: config has no field {key!r}.")
        try:
            node[field] = float(value) if isinstance(node[field], float) and isinstance(value, int) else value
        except TypeError as e:
            kind = type(node[field]).__name__
            raise ConfigError(f"run {name}: {key}={value!r}, but that field takes values of type {kind}.") from e
    return config


def check_run(config: ml_collections.ConfigDict, name: str, devices: Sequence[jax.Device] | None = None) -> None:
    """What `train` refuses before it builds anything, checked for one run: the training setup (model, data
    pipeline, train section, optimizer), the batch against gradient accumulation and the mesh, laid over
    `devices` (those this process trains on) when given. ConfigError naming the run and the field."""
    try:
        setup = training_setup(config)
        if setup.pipeline.batch_size % config.train.accumulate_steps:
            raise ConfigError(
                f"data.batch_size {setup.pipeline.batch_size} is not divisible by train.accumulate_steps "
                f"{config.train.accumulate_steps}; choose a divisor of the batch size."
            )
        mesh = MeshConfig(**config.train.mesh)
        if min(mesh.shape) < 1:
            raise ConfigError(f"train.mesh data x fsdp x tensor = {mesh.shape}: every axis needs a size >= 1.")
        if devices is not None:
            make_mesh(mesh, devices)
    except (ConfigError, TrainingError, ValueError, TypeError) as e:
        raise ConfigError(f"run {name}: {e}") from e


def load_sweep(path: str, arg: str | None = None) -> dict:
    """A sweep file's `get_sweep(arg)`: {"config": "configs/x.py:args", "runs": [overrides...],
    "fixed": {overrides of every run}, "test_time_scaling": [run names evaluated again with more frames],
    "base": {overrides of a run trained first, that every run starts from} (optional)}."""
    return load_python_file(path).get_sweep(arg)


def base_config(config_arg: str) -> ml_collections.ConfigDict:
    path, _, arg = config_arg.partition(":")
    return load_config_file(path, arg or None)


def stages(
    runs: Sequence[Mapping[str, Any]],
    fixed: Mapping[str, Any] | None = None,
    base: Mapping[str, Any] | None = None,
    root: str = "",
) -> list[tuple[str, dict[str, Any]]]:
    """(name, every override) of each run in training order: the `base` run first when there is one,
    then the runs, each starting from the base run's workdir. `fixed` applies to all and stays out of
    the names."""
    if not runs:
        raise ConfigError("the sweep has no runs; give it at least one (a dict of config overrides).")
    if not all(runs):
        raise ConfigError(
            "the sweep has a run without overrides, which would train in the sweep's root; give every run at "
            "least one config field (a run at the config's own settings: e.g. {'train.seed': 0})."
        )
    named = [(run_name(r), {**(fixed or {}), **r}) for r in runs]
    if base is not None:
        start = {"train.init_from": run_dir(root, BASE)}
        named = [(BASE, {**(fixed or {}), **base}), *((name, {**start, **o}) for name, o in named)]
    names = [name for name, _ in named]
    if len(set(names)) != len(names):
        raise ConfigError(f"the sweep repeats runs: {sorted({n for n in names if names.count(n) > 1})}")
    return named


def plan(
    config_arg: str,
    runs: Sequence[Mapping[str, Any]],
    fixed: Mapping[str, Any] | None = None,
    base: Mapping[str, Any] | None = None,
    root: str = "",
    devices: Sequence[jax.Device] | None = None,
) -> list[tuple[str, ml_collections.ConfigDict]]:
    """(name, validated config) of every run (see `stages`; `check_run` with `devices`). Nothing runs unless
    every run is valid."""
    config = base_config(config_arg)
    planned = [(name, apply(config, overrides, name)) for name, overrides in stages(runs, fixed, base, root)]
    for name, run_config in planned:
        check_run(run_config, name, devices)
    return planned


def pod_commands(
    config_arg: str,
    runs: Sequence[Mapping[str, Any]],
    root: str,
    fixed: Mapping[str, Any] | None = None,
    base: Mapping[str, Any] | None = None,
) -> list[str]:
    """One train command (every host of a pod runs it) and one evaluation command per run, in order."""
    plan(config_arg, runs, fixed, base, root)
    lines = []
    for name, overrides in stages(runs, fixed, base, root):
        workdir = run_dir(root, name)
        argv = train_command(config_arg, overrides, workdir, distributed=True, python="python")
        lines.append(shlex.join(argv))
        lines.append(shlex.join(["python", "-m", "stts_jax.evaluate", f"--checkpoint={workdir}"]))
    return lines


class SweepPreempted(RuntimeError):
    """A run was stopped (SIGTERM) before its last step: nothing after it is trained or evaluated."""


def run_sweep(
    config_arg: str,
    runs: Sequence[Mapping[str, Any]],
    root: str,
    test_time_scaling: Sequence[str] = (),
    fixed: Mapping[str, Any] | None = None,
    batch_size: int = 8,
    progress: bool = True,
    base: Mapping[str, Any] | None = None,
) -> list[str]:
    """Trains and evaluates every run under `root` (skipping finished work; the `base` run first);
    returns the run names."""
    runs_planned = plan(config_arg, runs, fixed, base, root, devices=jax.devices())  # the devices `train` uses
    for i, (name, config) in enumerate(runs_planned, start=1):
        workdir = run_dir(root, name)
        print(f"[{i}/{len(runs_planned)}] {name}")
        evaluations = [("eval_test.json", None)]
        if name in test_time_scaling:
            evaluations.append(("eval_test_tts.json", scaled_frames(model_config(config), config)))
        evaluations = [(f, frames) for f, frames in evaluations if not os.path.exists(os.path.join(workdir, f))]
        if not evaluations:
            continue  # trained and evaluated by an earlier pass
        if train(config, workdir, progress).get("preempted"):
            raise SweepPreempted(f"{name} stopped by SIGTERM with a checkpoint; rerun the same command to resume.")
        for filename, frames in evaluations:
            path = os.path.join(workdir, filename)
            cfg, params, step = restore_params(workdir)
            test_source, tokenizer = source(scaled_data(config, frames, "test"), "test")
            answer_format = config.data.get("answer_format", "letter")
            results = evaluate(cfg, params, test_source, tokenizer, batch_size, None, progress, answer_format)
            results.update(run=name, step=step, test_time_scaling=frames is not None)
            results["forward_flops"] = example_flops(cfg, results)
            with open(path + ".tmp", "w") as f:
                json.dump(results, f, indent=2)
            os.replace(path + ".tmp", path)  # a crash never leaves a half-written result behind
    return [name for name, _ in runs_planned]


def example_flops(cfg, results: dict) -> float:
    """Forward FLOPs of one example at the evaluated frame count (XLA cost analysis, abstract shapes)."""
    frames = round(results["frames_per_example"])
    seq = prompt_length(cfg, frames, text_tokens=48)
    return forward_flops(cfg, abstract_batch(cfg, 1, frames, seq))
