"""Evaluate a run or an export on a split: multiple-choice accuracy per family, JSON + Markdown.

  python -m stts_jax.evaluate --checkpoint=/tmp/run --split=test --json=/tmp/run/test.json
  python -m stts_jax.evaluate --checkpoint=/tmp/run --method=random --prune_ratio=0.7
  python -m stts_jax.evaluate --checkpoint=/tmp/run --test_time_scaling       # more frames, same tokens
  python -m stts_jax.evaluate --checkpoint=/tmp/run_hf --config=configs/synthetic.py:frames=8

--checkpoint is a training workdir (its config.json gives the data; --step picks a checkpoint) or a
directory written by `python -m stts_jax.export` (then --config gives the data).
"""

from __future__ import annotations

import json

from absl import flags
from etils import epath
from ml_collections import config_flags

from stts_jax import cli
from stts_jax.convert.hf import HF_CONFIG_FILE
from stts_jax.convert.orbax_params import PARAMS_DIR
from stts_jax.data.sources import source
from stts_jax.errors import CheckpointError, ConfigError
from stts_jax.evaluate.multiple_choice import SCORING, evaluate, markdown_table, scaled_data, scaled_frames
from stts_jax.export.formats import load_export
from stts_jax.models.config import STTS_METHODS
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
flags.DEFINE_enum("scoring", "generate", SCORING, "mode of the Markdown table (the JSON holds both)")
flags.DEFINE_integer("limit", None, "evaluate the first N examples only", lower_bound=1)
flags.DEFINE_integer("batch_size", 8, "rows per forward pass", lower_bound=1)
flags.DEFINE_string("json", None, "write the results here (local or gs://)")
flags.DEFINE_string("markdown", None, "write the Markdown table here (local or gs://)")

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


def main(argv):
    del argv
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
    cfg = cfg.with_stts(**changes)
    if cfg.stts.uses_scorer and "scorer" not in params:
        raise ConfigError(f"stts.method={cfg.stts.method!r} needs a scorer, and {where} holds none.")
    if not cfg.stts.uses_scorer:
        params = {k: v for k, v in params.items() if k != "scorer"}
    frames = FLAGS.frames
    if FLAGS.test_time_scaling:
        frames = scaled_frames(cfg, config)
    data_config = scaled_data(config, frames, FLAGS.split)
    split_source, tokenizer = source(data_config, FLAGS.split)
    answer_format = data_config.data.get("answer_format", "letter")
    results = evaluate(cfg, params, split_source, tokenizer, FLAGS.batch_size, FLAGS.limit, answer_format=answer_format)
    results.update(checkpoint=where, split=FLAGS.split, method=cfg.stts.method, prune_ratio=cfg.stts.prune_ratio)
    name = f"{cfg.stts.method} k={cfg.stts.prune_ratio:g}" if cfg.stts.prunes else cfg.stts.method
    table = markdown_table({f"{name}, {results['frames_per_example']:.0f} frames": results}, FLAGS.scoring)
    print(table)
    print(f"accuracy: {', '.join(f'{m} {100 * a:.1f}%' for m, a in results['accuracy'].items())}")
    if FLAGS.json:
        epath.Path(FLAGS.json).write_text(json.dumps(results, indent=2))
    if FLAGS.markdown:
        epath.Path(FLAGS.markdown).write_text(table + "\n")


if __name__ == "__main__":
    flags.mark_flags_as_required(["checkpoint"])
    cli.run(main)
