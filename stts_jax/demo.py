"""The offline demo: python -m stts_jax.demo [--workdir=/tmp/stts_jax_demo] [--steps=N]

Builds the synthetic video-QA set, trains the same small model three times (STTS at k = 0.5, no
pruning, random pruning at k = 0.5), evaluates the three on the test split, prints one table
(accuracy per question family, vision tokens per example, training-step time against no pruning)
and exports the STTS model as a Hugging Face Molmo2 directory. Rerunning resumes or reuses what is
already in the workdir.
"""

from __future__ import annotations

import json
import os
import shutil

from absl import app, flags
from absl import logging as absl_logging

from stts_jax.configs import load_config_file
from stts_jax.evaluate import evaluate, markdown_table
from stts_jax.export import export, restore_params
from stts_jax.train.loop import source, train
from stts_jax.train.metrics import median_step_seconds

FLAGS = flags.FLAGS
flags.DEFINE_string("workdir", "/tmp/stts_jax_demo", "where the data, runs, results and export go")
flags.DEFINE_integer("steps", 500, "training steps per model")
flags.DEFINE_integer("frames", 8, "frames per synthetic video")

CONFIG = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "configs", "synthetic.py")
RUNS = (("stts", 0.5), ("none", 0.0), ("random", 0.5))


def demo_config(method: str, prune_ratio: float, workdir: str, steps: int, frames: int):
    config = load_config_file(CONFIG, f"variant=tiny,frames={frames},method={method},prune_ratio={prune_ratio}")
    config.data.data_dir = os.path.join(workdir, "data")
    config.train.update(steps=steps, checkpoint_every=steps, eval_every=0)
    config.train.optimizer.total_steps = steps
    return config


def run_demo(workdir: str, steps: int, frames: int) -> str:
    results, step_seconds = {}, {}
    for method, ratio in RUNS:
        name = f"{method} k={ratio:g}" if ratio else method
        run_dir = os.path.join(workdir, method)
        config = demo_config(method, ratio, workdir, steps, frames)
        print(f"== {name}: training {steps} steps in {run_dir}")
        train(config, run_dir)
        cfg, params, _ = restore_params(run_dir)
        test_source, tokenizer = source(config, "test")
        print(f"== {name}: evaluating on the test split ({len(test_source)} questions)")
        results[name] = evaluate(cfg, params, test_source, tokenizer, 8, answer_format=config.data.answer_format)
        step_seconds[name] = median_step_seconds(run_dir)
        if method == "stts":
            out = os.path.join(workdir, "stts_hf")
            shutil.rmtree(out, ignore_errors=True)  # the demo's own export, remade from this run
            export(cfg, params, out, "hf")
            print(f"== exported the STTS model to {out} (Hugging Face Molmo2 + stts_scorer.safetensors)")
    table = markdown_table(results).splitlines()
    base = step_seconds["none"]
    table[0] += " train step time vs none |"
    table[1] += "---|"
    for i, name in enumerate(results, start=2):
        table[i] += f" {step_seconds[name] / base:.2f} |"
    text = "\n".join(table)
    with open(os.path.join(workdir, "results.md"), "w") as f:
        f.write(text + "\n")
    with open(os.path.join(workdir, "results.json"), "w") as f:
        json.dump({"results": results, "step_seconds": step_seconds}, f, indent=2)
    return text


def main(argv):
    del argv
    absl_logging.set_verbosity(absl_logging.ERROR)  # TFDS and Orbax narrate every file at INFO
    os.makedirs(FLAGS.workdir, exist_ok=True)
    table = run_demo(FLAGS.workdir, FLAGS.steps, FLAGS.frames)
    print(f"\nTest accuracy (%), greedy letter generation, {FLAGS.frames}-frame videos, {FLAGS.steps} steps each:\n")
    print(table)
    print(f"\n(also in {FLAGS.workdir}/results.md)")


if __name__ == "__main__":
    app.run(main)
