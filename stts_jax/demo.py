"""The offline demo: python -m stts_jax.demo [--workdir=/tmp/stts_jax_demo] [--base_steps=N] [--steps=N]

Builds the synthetic video-QA set of the replication (RESULTS.md: `moving_color` and `needle_color`,
the two families the `tiny` model learns), trains the unpruned model from scratch (the base), then
fine-tunes it three times, as the paper fine-tunes a pretrained Molmo2: STTS at k = `prune_ratio`, no
pruning, random pruning at the same k. It evaluates the four models on the test split, prints one
table (accuracy per question family, the share of the asked-about object's windows the pruning kept,
vision tokens per example, training-step time against no pruning) and exports the STTS model as a
Hugging Face Molmo2 directory. Rerunning reuses what is already in the workdir.
"""

from __future__ import annotations

import json
import os
import shutil

from absl import flags

from stts_jax import cli
from stts_jax.evaluate.multiple_choice import markdown_table
from stts_jax.experiments.replication import get_sweep
from stts_jax.export.formats import export
from stts_jax.sweep.runner import BASE, run_sweep
from stts_jax.train.checkpoint import restore_params
from stts_jax.train.experiment import run_name
from stts_jax.train.metrics import median_step_seconds

FLAGS = flags.FLAGS
flags.DEFINE_string("workdir", "/tmp/stts_jax_demo", "where the data, runs, results and export go")
flags.DEFINE_integer("base_steps", 400, "training steps of the unpruned base model, from scratch")
flags.DEFINE_integer("steps", 60, "fine-tuning steps of each pruned / unpruned model")
flags.DEFINE_float("prune_ratio", 0.7, "k of STTS and random pruning")


def run_demo(workdir: str, base_steps: int, steps: int, prune_ratio: float) -> str:
    sweep = get_sweep(f"seeds=1,steps={steps},base_steps={base_steps}")
    runs = [{"stts.method": "stts", "stts.prune_ratio": prune_ratio}, {"stts.method": "none"}]
    runs += [{"stts.method": "random", "stts.prune_ratio": prune_ratio}]
    fixed = {**sweep["fixed"], "data.data_dir": os.path.join(workdir, "data")}
    root = os.path.join(workdir, "runs")
    run_sweep(sweep["config"], runs, root, fixed=fixed, base=sweep["base"])
    label = lambda r: "none" if r["stts.method"] == "none" else f"{r['stts.method']} k={prune_ratio:g}"
    names = {f"base ({base_steps} steps, no pruning)": BASE} | {label(r): run_name(r) for r in runs}
    results, seconds = {}, {}
    for row, name in names.items():
        with open(os.path.join(root, name, "eval_test.json")) as f:
            results[row] = json.load(f)
        seconds[row] = median_step_seconds(os.path.join(root, name))
    cfg, params, _ = restore_params(os.path.join(root, run_name(runs[0])))
    out = os.path.join(workdir, "stts_hf")
    shutil.rmtree(out, ignore_errors=True)  # the demo's own export, remade from this run
    export(cfg, params, out, "hf")
    print(f"== exported the STTS model to {out} (Hugging Face Molmo2 + stts_scorer.safetensors)")

    table = markdown_table(results).splitlines()
    table[0] += " object windows kept | train step time vs none |"
    table[1] += "---|---|"
    for i, row in enumerate(results, start=2):
        share = results[row].get("kept_object_share")
        table[i] += f" {'-' if share is None else f'{100 * share:.1f}'} | {seconds[row] / seconds['none']:.2f} |"
    text = "\n".join(table)
    with open(os.path.join(workdir, "results.md"), "w") as f:
        f.write(text + "\n")
    with open(os.path.join(workdir, "results.json"), "w") as f:
        json.dump({"results": results, "step_seconds": seconds}, f, indent=2)
    return text


def main(argv):
    del argv
    os.makedirs(FLAGS.workdir, exist_ok=True)
    table = run_demo(FLAGS.workdir, FLAGS.base_steps, FLAGS.steps, FLAGS.prune_ratio)
    print(
        f"\nTest accuracy (%), greedy generation, 8-frame videos; base {FLAGS.base_steps} steps from scratch, "
        f"then {FLAGS.steps} fine-tuning steps each:\n"
    )
    print(table)
    print(f"\n(also in {FLAGS.workdir}/results.md)")


if __name__ == "__main__":
    cli.run(main)
