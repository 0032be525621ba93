"""Evaluate a run or an export on a split, or on the paper's benchmarks (Table 1): accuracy by generation
(the answer read from up to --max_new_tokens generated tokens) and by option log-likelihood, JSON + Markdown,
and per-sample predictions as JSON Lines.

  python -m stts_jax.evaluate --checkpoint=/tmp/run --split=test --json=/tmp/run/test.json
  python -m stts_jax.evaluate --checkpoint=/tmp/run --method=random --prune_ratio=0.7
  python -m stts_jax.evaluate --checkpoint=/tmp/run --test_time_scaling       # more frames, same tokens
  python -m stts_jax.evaluate --checkpoint=/tmp/run_hf --config=configs/synthetic.py:frames=8
  python -m stts_jax.evaluate --checkpoint=/ckpt/Molmo2-4B --config=configs/manifest.py:max_frames=64 \\
      --benchmarks=all --data_root=/data/benchmarks --json=t1.json --markdown=t1.md --predictions=samples.jsonl

--checkpoint is a training workdir (its config.json gives the data; --step picks a checkpoint) or a
directory written by `python -m stts_jax.export` (then --config gives the data).

--benchmarks evaluates each named setting of Table 1 (`stts_jax.benchmarks.registry`; "all": the 13) on the
test split of its converted manifest (`python -m stts_jax.benchmarks.convert`), found under --data_root as
NAME/NAME.jsonl, NAME.jsonl or */NAME.jsonl, read through the config's manifest data settings (frames, tokenizer;
data.tokenizer defaults to the checkpoint's tokenizer.json). A setting without a manifest stops the command
before anything is evaluated, with the command that writes it; --skip_missing evaluates the others and shows
"-" for it. Each process evaluates its share of the questions (multi-host: --distributed on a pod, or
--coordinator), split over its devices; process 0 writes the files.
"""

from __future__ import annotations

import copy
import json
import logging

import jax
import ml_collections
import numpy as np
from absl import flags
from etils import epath
from ml_collections import config_flags

from stts_jax import cli
from stts_jax.convert.hf import HF_CONFIG_FILE
from stts_jax.convert.hf_processor import TOKENIZER_FILE
from stts_jax.convert.orbax_params import PARAMS_DIR
from stts_jax.data.sources import source
from stts_jax.errors import CheckpointError, ConfigError
from stts_jax.evaluate.benchmarks import (
    benchmark_data,
    benchmark_names,
    find_manifests,
    manifest_docs,
    markdown_table1,
    missing_manifests,
    prediction_lines,
    table1,
)
from stts_jax.evaluate.multiple_choice import (
    MAX_NEW_TOKENS,
    SCORING,
    evaluate,
    markdown_table,
    scaled_data,
    scaled_frames,
)
from stts_jax.export.formats import load_export
from stts_jax.models.config import STTS_METHODS, Molmo2Config
from stts_jax.train.checkpoint import RUN_CONFIG_FILE, restore_params, run_config, workdir_path

FLAGS = flags.FLAGS
flags.DEFINE_string("checkpoint", None, "a training workdir or an exported directory")
flags.DEFINE_integer("step", None, "checkpoint step of a workdir (default: the latest)")
config_flags.DEFINE_config_file("config", None, "experiment config for the data (default: the workdir's)")
flags.DEFINE_enum("split", "test", ["train", "validation", "test"], "split to evaluate")
flags.DEFINE_enum("method", None, list(STTS_METHODS), "pruning")
flags.DEFINE_float("prune_ratio", None, "pruning ratio at inference (default: as trained)", lower_bound=0.0)
flags.DEFINE_integer("frames", None, "frames per video at inference (default: as trained)", lower_bound=1)
flags.DEFINE_bool("test_time_scaling", False, "raise the frames so kept tokens match the unpruned model's")
flags.DEFINE_enum(
    "scoring", "generate", SCORING, "mode of a split's Markdown table (the --benchmarks table and the JSON hold both)"
)
flags.DEFINE_integer("limit", None, "evaluate the first N examples only (of each benchmark)", lower_bound=1)
flags.DEFINE_integer("batch_size", 8, "rows per forward pass on each process, split over its devices", lower_bound=1)
flags.DEFINE_integer(
    "max_new_tokens", MAX_NEW_TOKENS, "tokens generated per answer, read up to <|im_end|>", lower_bound=1
)
flags.DEFINE_string("benchmarks", None, "Table 1 settings to evaluate, comma-separated, or all (with --data_root)")
flags.DEFINE_string("data_root", None, "the folder of the converted manifests (--benchmarks): NAME/NAME.jsonl, ...")
flags.DEFINE_bool("skip_missing", False, "--benchmarks: evaluate the settings that have a manifest, show - for others")
flags.DEFINE_string("json", None, "write the results here (local or gs://)")
flags.DEFINE_string("markdown", None, "write the Markdown table here (local or gs://)")
flags.DEFINE_string("predictions", None, "write one JSON line per question here (lmms-eval's --log_samples shape)")
cli.define_process_flags()

log = logging.getLogger("stts_jax.evaluate")

CHECKPOINTS_DIR = "checkpoints"  # where stts_jax.train.checkpoint.manager keeps a run's steps
WHAT_TO_PASS = (
    "pass the --workdir of a `python -m stts_jax.train` run (it holds checkpoints/) or the --out folder of "
    "`python -m stts_jax.export` (it holds params/, or config.json and *.safetensors)"
)


def checkpoint_kind(path: str) -> str:
    """What --checkpoint names: "workdir" (a training run with checkpoints/) or "export" (a folder written by
    `stts_jax.export`, or a Hugging Face Molmo2 folder); else CheckpointError saying what it is and what to pass."""
    folder = workdir_path(path)
    if not folder.exists():
        raise CheckpointError(f"--checkpoint={path} does not exist; {WHAT_TO_PASS}.")
    if not folder.is_dir():
        raise CheckpointError(f"--checkpoint={path} is a file, not a folder; {WHAT_TO_PASS}.")
    if (folder / CHECKPOINTS_DIR).is_dir():
        return "workdir"
    if (folder / PARAMS_DIR).is_dir() or ((folder / HF_CONFIG_FILE).is_file() and any(folder.glob("*.safetensors"))):
        return "export"
    if (folder / RUN_CONFIG_FILE).is_file():  # the name of a run's config and of a Hugging Face config
        raise CheckpointError(
            f"--checkpoint={path} holds {RUN_CONFIG_FILE} but neither {CHECKPOINTS_DIR}/ nor *.safetensors: a "
            "training run that saved no step yet (train until it saves one: every train.checkpoint_every steps, "
            "and at the end) or an export without its weights (export again); or pass another folder."
        )
    raise CheckpointError(
        f"--checkpoint={path} is neither a training workdir (no {CHECKPOINTS_DIR}/) nor an export (no "
        f"{PARAMS_DIR}/, no {HF_CONFIG_FILE} with *.safetensors); {WHAT_TO_PASS}."
    )


def checkpoint_tokenizer(config: ml_collections.ConfigDict, path: str) -> ml_collections.ConfigDict:
    """A manifest config without data.tokenizer reads the tokenizer.json that --checkpoint holds (a Hugging Face
    folder, or an export of this project, carries one)."""
    file = workdir_path(path) / TOKENIZER_FILE
    if config.data.dataset != "manifest_video_qa" or config.data.get("tokenizer") or not file.is_file():
        return config
    config = copy.deepcopy(config)
    config.data.tokenizer = str(file)
    return config


def report(text: str) -> None:
    """Print on process 0 (every process computes the same results)."""
    if jax.process_index() == 0:
        print(text)


def write(path: str | None, text: str) -> None:
    """`text` at `path` (local or gs://, its folder made), by process 0 only; nothing without a path."""
    if path and jax.process_index() == 0:
        out = epath.Path(path)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(text)


def evaluate_split(
    cfg: Molmo2Config, params, config: ml_collections.ConfigDict, frames: int | None, run: str, settings: dict
) -> tuple[dict, str, list[dict]]:
    """--split: (results, per-family Markdown table, prediction lines)."""
    data_config = scaled_data(config, frames, FLAGS.split)
    split_source, tokenizer = source(data_config, FLAGS.split)
    results = evaluate(cfg, params, split_source, tokenizer, **settings) | {"split": FLAGS.split}
    table = markdown_table({f"{run}, {results['frames_per_example']:.0f} frames": results}, FLAGS.scoring)
    report(table)
    report(f"accuracy: {', '.join(f'{m} {100 * a:.1f}%' for m, a in results['accuracy'].items())}")
    manifest = data_config.data.get("test_manifest") if FLAGS.split == "test" else None
    docs = manifest_docs(manifest) if FLAGS.predictions and manifest else None
    return results, table, prediction_lines(FLAGS.split, results, docs)


def evaluate_benchmarks(
    cfg: Molmo2Config,
    params,
    config: ml_collections.ConfigDict,
    frames: int | None,
    run: str,
    settings: dict,
    manifests: dict[str, str | None],
) -> tuple[dict, str, list[dict]]:
    """--benchmarks: (results with Table 1 and each setting's figures, Table 1 in Markdown, prediction lines)."""
    by_name, lines = dict.fromkeys(manifests), []
    missing = [name for name, manifest in manifests.items() if manifest is None]
    if missing:
        log.warning("%s; shown as -", missing_manifests(FLAGS.data_root, missing))
    for name, manifest in manifests.items():
        if manifest is None:
            continue
        data_config = scaled_data(benchmark_data(config, name, manifest), frames, "test")
        split_source, tokenizer = source(data_config, "test")
        result = evaluate(cfg, params, split_source, tokenizer, **settings)
        accuracy = ", ".join(f"{m} {100 * a:.1f}%" for m, a in result["accuracy"].items())
        report(f"{name}: {result['examples']} questions, {accuracy}, skipped {sum(result['skipped'].values())}")
        lines += prediction_lines(name, result, manifest_docs(manifest))
        by_name[name] = result | {"manifest": manifest}
    kept = [p["vision_tokens"] for r in by_name.values() if r is not None for p in r["predictions"]]
    frames = frames or config.data.video_frames
    table = table1(by_name)
    markdown = markdown_table1(table, f"{run}, {frames} frames", float(np.mean(kept)))
    report(markdown)
    figures = {name: r and {k: v for k, v in r.items() if k != "predictions"} for name, r in by_name.items()}
    return {"frames": frames, "data_root": FLAGS.data_root, "table": table, "benchmarks": figures}, markdown, lines


def main(argv):
    del argv
    if (FLAGS.benchmarks is None) != (FLAGS.data_root is None):
        raise ConfigError(
            "--benchmarks and --data_root go together: the settings to evaluate and where their manifests are."
        )
    where = cli.distributed_where()
    if where is not None:
        jax.distributed.initialize(**where)
    manifests = None
    if FLAGS.benchmarks is not None:  # before the checkpoint loads: a missing manifest costs seconds, not minutes
        manifests = find_manifests(FLAGS.data_root, benchmark_names(FLAGS.benchmarks), FLAGS.skip_missing)
    path = FLAGS.checkpoint
    kind = checkpoint_kind(path)
    config = FLAGS.config
    changes = {k: v for k, v in (("method", FLAGS.method), ("prune_ratio", FLAGS.prune_ratio)) if v is not None}
    if kind == "workdir":
        config = config or run_config(path)
        cfg, params, step = restore_params(path, FLAGS.step)
        where = f"{path} step {step}"
    else:
        if config is None:
            raise ConfigError("--config is needed with an exported checkpoint: it names the evaluation data.")
        cfg, params = load_export(path)
        where = path
    config = checkpoint_tokenizer(config, path)
    cfg = cfg.with_stts(**changes)
    if cfg.stts.uses_scorer and "scorer" not in params:
        raise ConfigError(f"stts.method={cfg.stts.method!r} needs a scorer, and {where} holds none.")
    if not cfg.stts.uses_scorer:
        params = {k: v for k, v in params.items() if k != "scorer"}
    frames = FLAGS.frames
    if FLAGS.test_time_scaling:
        frames = scaled_frames(cfg, config)
    run = f"{cfg.stts.method} k={cfg.stts.prune_ratio:g}" if cfg.stts.prunes else cfg.stts.method
    settings = dict(
        batch_size=FLAGS.batch_size,
        limit=FLAGS.limit,
        answer_format=config.data.get("answer_format", "letter"),
        max_new_tokens=FLAGS.max_new_tokens,
        progress=jax.process_index() == 0,
    )
    if manifests is None:
        results, table, lines = evaluate_split(cfg, params, config, frames, run, settings)
    else:
        results, table, lines = evaluate_benchmarks(cfg, params, config, frames, run, settings, manifests)
    results |= dict(checkpoint=where, method=cfg.stts.method, prune_ratio=cfg.stts.prune_ratio)
    results["max_new_tokens"] = FLAGS.max_new_tokens
    write(FLAGS.json, json.dumps(results, indent=2))
    write(FLAGS.markdown, table + "\n")
    write(FLAGS.predictions, "".join(json.dumps(line, ensure_ascii=False, default=str) + "\n" for line in lines))


if __name__ == "__main__":
    flags.mark_flags_as_required(["checkpoint"])
    cli.run(main)
