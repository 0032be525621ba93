"""Turning ml_collections experiment configs (configs/*.py) into the typed configs of the package.

A config file's `get_config(arg)` parses an argument string such as "variant=tiny,prune_ratio=0.5"
with `parse_arg` and returns a ConfigDict with sections `model`, `stts` and `data`; every field can be
overridden on the command line (`--config.stts.prune_ratio=0.3`). `model_config` and
`pipeline_config` validate before anything compiles.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import os
import types
from collections.abc import Mapping
from typing import Any

import ml_collections

from stts_jax.data.pipeline import PipelineConfig
from stts_jax.errors import ConfigError
from stts_jax.models.config import Molmo2Config, STTSConfig
from stts_jax.models.variants import get_config
from stts_jax.train.optimizer import OptimizerConfig


def parse_arg(arg: str | None, **defaults: Any) -> ml_collections.ConfigDict:
    """ "k1=v1,k2=v2" -> ConfigDict over `defaults`, values cast to each default's type."""
    parsed = ml_collections.ConfigDict(defaults)
    for item in filter(None, (arg or "").split(",")):
        key, sep, value = item.partition("=")
        if not sep or key not in defaults:
            raise ConfigError(f"config argument {item!r}: expected key=value with key in {sorted(defaults)}")
        kind = type(defaults[key])
        parsed[key] = value.lower() in ("1", "true", "yes") if kind is bool else kind(value)
    return parsed


def load_python_file(path: str) -> types.ModuleType:
    """A config or sweep file (configs/*.py) loaded as a module, as `--config=path` loads it."""
    spec = importlib.util.spec_from_file_location(os.path.splitext(os.path.basename(path))[0], path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def load_config_file(path: str, arg: str | None = None) -> ml_collections.ConfigDict:
    """`get_config(arg)` of a config file (configs/*.py), as `--config=path:arg` would give it."""
    return load_python_file(path).get_config(arg)


def manifest_data_section(
    frames: int, batch_size: int, videos_per_row: int, llm_seq_len: int, seed: int
) -> ml_collections.ConfigDict:
    """config.data for a JSONL manifest of real videos (stts_jax/data/manifest.py): `frames` sampled per
    video (at most 2 fps), rows of `videos_per_row` videos and `llm_seq_len` tokens after pruning."""
    return ml_collections.ConfigDict(
        {
            "dataset": "manifest_video_qa",
            "data_dir": "/tmp/stts_jax_data",  # built datasets, each named by its manifest's content and settings
            "name": "default",  # the prefix of those names
            "train_manifest": "",  # required: --config.data.train_manifest=PATH (local or gs://)
            "eval_manifest": "",  # the validation split (train.eval_every > 0 needs it)
            "test_manifest": "",
            "tokenizer": "",  # required: --config.data.tokenizer=PATH/tokenizer.json (Qwen3's)
            "mode": "stored",  # stored: built once at model resolution | on_the_fly: decoded as read, no build
            "video_frames": frames,
            "max_fps": 2.0,
            "frame_encoding": "jpeg",  # stored frames: jpeg (a few MB per 64-frame clip) | png (lossless)
            "jpeg_quality": 95,
            "allow_outside_paths": False,  # videos outside the manifest's folder (absolute paths, .., gs://)
            "build_workers": 4,  # processes decoding videos while building
            "progress": True,
            "worker_count": 0,  # grain processes preparing batches while the device computes (0: in this one)
            "worker_buffer_size": 2,  # batches each of them prepares ahead
            "batch_size": batch_size,  # rows per host
            "max_frames": videos_per_row * frames,  # frame slots per row
            "llm_seq_len": llm_seq_len,
            "max_videos_per_row": videos_per_row,
            "packing_bins": 8,
            "seed": seed,
            "strict": False,
        }
    )


def train_section(steps: int, seed: int, **changes: Any) -> ml_collections.ConfigDict:
    """config.train with the paper's optimizer recipe (STTS.md section 8); `changes` override fields,
    e.g. `learning_rates=[...]` or `mesh={"data": 8, "fsdp": 8, "tensor": 1}`."""
    optimizer = {k: changes.pop(k) for k in ("learning_rates", "warmup_steps", "freeze") if k in changes}
    train = ml_collections.ConfigDict(
        {
            "steps": steps,
            "seed": seed,
            "checkpoint_every": 500,
            "keep_checkpoints": 3,
            "accumulate_steps": 1,  # gradient accumulation: micro-batches of data.batch_size / this
            "eval_every": 500,  # validation every N steps and at the end (0: off)
            "eval_batches": 8,
            # > 0: train on the first N batches, held on the devices and repeated: the step time without input,
            # to set beside a run at 0 (the input pipeline's cost; `python -m stts_jax.bench data`)
            "preload_batches": 0,
            "init_from": "",  # a Hugging Face Molmo2 directory or a run's workdir to start from (scorer kept or fresh)
            "mesh": {"data": 1, "fsdp": 1, "tensor": 1},
            "optimizer": {
                "learning_rates": [list(rule) for rule in OptimizerConfig.learning_rates],
                "warmup_steps": 200,
                "total_steps": 0,  # 0: decay over train.steps (set to fix the schedule whatever the steps)
                "freeze": [],
            },
        }
    )
    train.optimizer.update(optimizer)
    train.update(changes)
    return train


def molmo2_4b_recipe(arg: str | None, hosts: int, accumulate_steps: int, mesh: dict) -> ml_collections.ConfigDict:
    """Molmo2-4B + STTS fine-tuning at the paper's recipe (STTS.md section 8) on a manifest dataset:
    the shared body of configs/molmo2_4b_*.py, which choose the slice's hosts, mesh and micro-batches.

    Arguments (in `arg`): method, prune_ratio, frames (per video), videos_per_row, batch (global rows),
    seq (LLM tokens per row after pruning), hosts (of the slice: data.batch_size is per host), seed."""
    a = parse_arg(
        arg, method="stts", prune_ratio=0.5, frames=64, videos_per_row=2, batch=64, seq=9686, hosts=hosts, seed=0
    )
    config = ml_collections.ConfigDict()
    config.model = ml_collections.ConfigDict(
        {
            "variant": "molmo2-4b",
            "dtype": "bfloat16",
            "param_dtype": "float32",
            "attention_impl": "splash",
            "scan_layers": True,
            "remat_policy": "full",
        }
    )
    config.stts = ml_collections.ConfigDict({"method": a.method, "prune_ratio": a.prune_ratio, "layer": 3})
    config.data = manifest_data_section(a.frames, a.batch // a.hosts, a.videos_per_row, a.seq, a.seed)
    config.train = train_section(steps=6250, seed=a.seed, accumulate_steps=accumulate_steps, mesh=mesh)
    return config


# Short names of the config fields that name a sweep's runs (run directories), e.g. "method=stts,k=0.5".
SHORT = {
    "stts.method": "method",
    "stts.prune_ratio": "k",
    "stts.layer": "layer",
    "train.seed": "seed",
    "data.seed": "data_seed",
}


def run_name(overrides: Mapping[str, Any]) -> str:
    """The name of the run a sweep makes with `overrides` (dotted field -> value), its directory's name."""
    return ",".join(f"{SHORT.get(k, k)}={v}" for k, v in overrides.items()).replace("/", "_")


def _fields(cls, section: ml_collections.ConfigDict, name: str) -> dict[str, Any]:
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(section.keys()) - known)
    if unknown:
        raise ConfigError(f"config.{name} has unknown field(s) {unknown}; known: {sorted(known)}")
    return {k: tuple(v) if isinstance(v, list) else v for k, v in section.items()}


def model_config(config: ml_collections.ConfigDict) -> Molmo2Config:
    """config.model (variant + run-time fields) and config.stts -> a validated Molmo2Config."""
    model = dict(config.model)
    variant = model.pop("variant")
    stts = STTSConfig(**_fields(STTSConfig, config.stts, "stts"))
    return get_config(variant, stts=stts, **model)


def pipeline_config(config: ml_collections.ConfigDict, model: Molmo2Config) -> PipelineConfig:
    """config.data (its pipeline fields) -> PipelineConfig, with the pruning ratio the model uses."""
    fields = {f.name for f in dataclasses.fields(PipelineConfig)}
    values = {k: v for k, v in config.data.items() if k in fields}
    values["prune_ratio"] = model.stts.prune_ratio if model.stts.prunes else 0.0
    return PipelineConfig(**values)


@dataclasses.dataclass(frozen=True)
class TrainingSetup:
    """The typed configs a training run is built from (the training loop and the AOT tool share them)."""

    model: Molmo2Config
    pipeline: PipelineConfig
    optimizer: OptimizerConfig


def training_setup(config: ml_collections.ConfigDict, **model_changes: Any) -> TrainingSetup:
    """config -> validated model, pipeline and optimizer configs; `model_changes` set run-time model fields
    (e.g. attention_impl="splash" for a TPU compile)."""
    model = model_config(config).replace(**model_changes).validate()
    pipeline = pipeline_config(config, model)
    check_train_section(config.train)
    rules = dict(config.train.get("optimizer", {}))
    # the schedule decays over the run's steps unless a config fixes it (the replication's runs share one)
    rules["total_steps"] = rules.get("total_steps") or config.train.steps
    optimizer = OptimizerConfig(**{k: tuple(map(tuple, v)) if k == "learning_rates" else v for k, v in rules.items()})
    return TrainingSetup(model, pipeline, optimizer)


def check_train_section(train: ml_collections.ConfigDict) -> None:
    """config.train values that would break a run, refused before anything is built."""
    at_least = {
        "steps": 1,
        "checkpoint_every": 1,
        "eval_batches": 1,
        "accumulate_steps": 1,
        "eval_every": 0,
        "preload_batches": 0,
    }
    for name, low in at_least.items():
        if train.get(name, low) < low:
            raise ConfigError(f"train.{name} {train.get(name)} must be >= {low}.")
    if train.get("keep_checkpoints", 1) < 1:
        raise ConfigError(
            f"train.keep_checkpoints {train.keep_checkpoints} would delete every checkpoint, the one a resumed run "
            "started from included; keep at least 1."
        )
