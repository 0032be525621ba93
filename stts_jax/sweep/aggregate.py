"""Tabulate and plot a finished sweep: python -m stts_jax.sweep.aggregate --root=DIR

Writes DIR/runs.csv (one line per run and evaluation), DIR/summary.md (mean ± standard deviation
over seeds, per method / ratio / layer / frames / training steps), DIR/accuracy_vs_ratio.png and
DIR/accuracy_vs_flops.png. A run started from another run's workdir counts its steps as "800+100".
"""

from __future__ import annotations

import csv
import glob
import json
import os
import statistics
from collections import defaultdict

from absl import flags

from stts_jax import cli
from stts_jax.errors import DataError
from stts_jax.train.metrics import METRICS_FILE, median_step_seconds

GROUP = ("method", "prune_ratio", "layer", "frames", "steps")


def training_steps(config: dict) -> str:
    """The run's training steps; "B+N" when it started from another run (B steps) of N steps."""
    steps, start = str(config["train"]["steps"]), config["train"].get("init_from", "")
    if not start:
        return steps
    try:
        with open(os.path.join(start, "config.json")) as f:
            return f"{json.load(f)['train']['steps']}+{steps}"
    except FileNotFoundError:
        return f"?+{steps}"  # a Hugging Face directory, or a moved run


def lost_objects(result: dict) -> dict[str, float]:
    """Per family: the share of questions whose object windows (frames 1..) were all pruned, and the
    accuracy on those questions (what survives of an object in the windows that were kept)."""
    row = {}
    for name in result["families"]:
        scored = [p for p in result["predictions"] if p["family"] == name and "kept_object_share" in p]
        lost = [p for p in scored if p["kept_object_share"] == 0]
        if scored:
            row[f"lost/{name}"] = len(lost) / len(scored)
        if lost:
            row[f"lost_accuracy/{name}"] = sum(p["generate"] == p["answer"] for p in lost) / len(lost)
    return row


def read_json(path: str, fix: str) -> dict:
    """A JSON file of a run, or DataError naming the file, what is wrong with it and `fix`."""
    try:
        with open(path) as f:
            return json.load(f)
    except FileNotFoundError as e:
        raise DataError(f"{path} is missing; {fix}.", "sweep_result") from e
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise DataError(f"{path} is not valid JSON ({e}; a truncated copy?); {fix}.", "sweep_result") from e


def reevaluate(path: str, root: str) -> str:
    """How to redo a run's evaluation file: the sweep evaluates a trained run whose file is missing."""
    return (
        f"delete {path} and run the sweep command again (python -m stts_jax.sweep ... --root={root}): it skips "
        "the finished runs and evaluates this one again from its last checkpoint"
    )


def retrain(run_dir: str) -> str:
    """How to redo a file the training of a run writes (its config, its metrics)."""
    return (
        f"python -m stts_jax.train writes it: put back a copy, or delete {run_dir} and run the sweep command "
        "again, which trains that run anew"
    )


def collect(root: str) -> list[dict]:
    rows = []
    for path in sorted(glob.glob(os.path.join(root, "*", "eval_test*.json"))):
        run_dir = os.path.dirname(path)
        result = read_json(path, reevaluate(path, root))
        config = read_json(os.path.join(run_dir, "config.json"), retrain(run_dir))
        try:
            step_seconds = median_step_seconds(run_dir)
        except (OSError, ValueError) as e:  # missing, a line cut short, no step timed
            metrics = os.path.join(run_dir, METRICS_FILE)
            raise DataError(f"{metrics} gives no step time ({e}); {retrain(run_dir)}.", "sweep_result") from e
        try:
            rows.append(_row(run_dir, result, config, step_seconds))
        except KeyError as e:
            raise DataError(
                f"{path} or {run_dir}/config.json lacks the field {e} (written by another version of stts_jax?); "
                f"{reevaluate(path, root)}.",
                "sweep_result",
            ) from e
    if not rows:
        raise FileNotFoundError(f"no eval_test*.json under {root}/*/: run the sweep first (python -m stts_jax.sweep).")
    return rows


def _row(run_dir: str, result: dict, config: dict, step_seconds: float) -> dict:
    """One line of runs.csv: a run's settings and one of its evaluations."""
    stts = config["stts"]
    row = {
        "run": os.path.basename(run_dir),
        "method": stts["method"],
        "prune_ratio": stts["prune_ratio"] if stts["method"] != "none" else 0.0,
        "layer": stts["layer"],
        "seed": config["train"]["seed"],
        "steps": training_steps(config),
        "frames": round(result["frames_per_example"]),
        "test_time_scaling": result["test_time_scaling"],
        "accuracy": result["accuracy"]["generate"],
        "likelihood_accuracy": result["accuracy"]["likelihood"],
        "vision_tokens": result["vision_tokens_per_example"],
        "forward_flops": result["forward_flops"],
        "step_seconds": step_seconds,
        **{f"family/{k}": v["generate"] for k, v in result["families"].items()},
        **{f"kept/{k}": v["kept_object_share"] for k, v in result["families"].items() if "kept_object_share" in v},
    }
    row.update({k: result[k] for k in ("kept_object_share",) if k in result})
    row.update(lost_objects(result))
    return row


def summarize(rows: list[dict]) -> list[dict]:
    """Mean and standard deviation over seeds of every numeric column, per GROUP."""
    groups: dict[tuple, list[dict]] = defaultdict(list)
    for row in rows:
        groups[tuple(row[k] for k in GROUP)].append(row)
    summary = []
    for key, members in sorted(groups.items(), key=lambda kv: (kv[0][0] != "none", kv[0][0], kv[0][1:])):
        entry = dict(zip(GROUP, key, strict=True), seeds=len(members))
        for column in members[0]:
            values = [m[column] for m in members if isinstance(m.get(column), (int, float)) and column not in GROUP]
            if len(values) == len(members) and column not in ("seed", "test_time_scaling"):
                entry[column] = statistics.mean(values)
                entry[column + "_std"] = statistics.stdev(values) if len(values) > 1 else 0.0
        summary.append(entry)
    return summary


def _mean_std(s: dict, key: str) -> str:
    """A share as "mean ± std" in %, or "-" where the group lacks it."""
    return f"{100 * s[key]:.1f} ± {100 * s[key + '_std']:.1f}" if key in s else "-"


def _table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return "\n".join(lines + ["| " + " | ".join(cells) + " |" for cells in rows])


def markdown(summary: list[dict]) -> str:
    families = sorted({k for s in summary for k in s if k.startswith("family/") and not k.endswith("_std")})
    has_share = any("kept_object_share" in s for s in summary)
    kept = sorted({k for s in summary for k in s if k.startswith("kept/") and not k.endswith("_std")})
    header = ["method", "k", "layer", "frames", "steps", "seeds", *[f.split("/")[1] for f in families], "overall"]
    header += ["object windows kept"] * has_share + [f"kept: {k.split('/')[1]}" for k in kept]
    header += ["vision tokens", "GFLOPs/example", "step time"]
    none_step = next((s["step_seconds"] for s in summary if s["method"] == "none"), None)
    rows = []
    for s in summary:
        cells = [s["method"], f"{s['prune_ratio']:g}", str(s["layer"]), str(s["frames"]), s["steps"], str(s["seeds"])]
        cells += [_mean_std(s, f) for f in families] + [_mean_std(s, "accuracy")]
        cells += [_mean_std(s, "kept_object_share")] * has_share + [_mean_std(s, k) for k in kept]
        cells += [f"{s['vision_tokens']:.0f}", f"{s['forward_flops'] / 1e9:.3f}"]
        cells.append(f"{s['step_seconds'] / none_step:.2f}x" if none_step else f"{s['step_seconds']:.3f} s")
        rows.append(cells)
    return _table(header, rows)


def lost_markdown(summary: list[dict]) -> str:
    """Questions whose object windows were all pruned, per family: their share and the accuracy on them."""
    families = sorted({k.split("/")[1] for s in summary for k in s if k.startswith("lost/") and not k.endswith("_std")})
    header = ["method", "k", "frames", "steps", "seeds"]
    header += [f"{f}: {what}" for f in families for what in ("all object windows pruned", "accuracy on those")]
    rows = [
        [s["method"], f"{s['prune_ratio']:g}", str(s["frames"]), s["steps"], str(s["seeds"])]
        + [_mean_std(s, f"{what}/{f}") for f in families for what in ("lost", "lost_accuracy")]
        for s in summary
        if any(k.startswith("lost/") for k in s)
    ]
    return _table(header, rows)


def plot(summary: list[dict], root: str) -> list[str]:
    """accuracy_vs_ratio.png (overall, then one panel per question family) and accuracy_vs_flops.png;
    runs evaluated at another frame count (test-time scaling) are left out of the curves."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    frames = statistics.mode(s["frames"] for s in summary)  # the sweep's own; fewer_frames runs have fewer
    steps = statistics.mode(s["steps"] for s in summary)  # leaves out a sweep's base run
    summary = [s for s in summary if s["frames"] <= frames and s["steps"] == steps]
    families = sorted({k for s in summary for k in s if k.startswith("family/") and not k.endswith("_std")})
    by_method: dict[str, list[dict]] = defaultdict(list)
    for s in summary:
        by_method[s["method"]].append(s)
    baseline = by_method.pop("none", [])
    paths = []
    for x, xlabel, name, panels in (
        ("prune_ratio", "pruning ratio k", "accuracy_vs_ratio.png", ["accuracy", *families]),
        ("forward_flops", "forward FLOPs per example", "accuracy_vs_flops.png", ["accuracy"]),
    ):
        fig, axes = plt.subplots(1, len(panels), figsize=(5.5 * len(panels), 4), squeeze=False)
        for ax, y in zip(axes[0], panels, strict=True):
            for method, points in sorted(by_method.items()):
                points = sorted(points + baseline, key=lambda p: p[x])  # every curve starts at no pruning
                points = [p for p in points if y in p]
                ys, errors = [100 * p[y] for p in points], [100 * p[y + "_std"] for p in points]
                ax.errorbar([p[x] for p in points], ys, yerr=errors, marker="o", capsize=3, label=method)
            if not by_method and baseline:
                ax.plot([p[x] for p in baseline], [100 * p[y] for p in baseline], "o", label="none")
            ax.set_title("overall" if y == "accuracy" else y.split("/")[1])
            ax.set_xlabel(xlabel)
            ax.set_ylabel("test accuracy (%)")
            ax.grid(alpha=0.3)
        axes[0][0].legend()
        fig.tight_layout()
        paths.append(os.path.join(root, name))
        fig.savefig(paths[-1], dpi=110)
        plt.close(fig)
    return paths


def aggregate(root: str) -> str:
    rows = collect(root)
    columns = sorted({k for r in rows for k in r}, key=lambda k: (k.startswith("family/"), k))
    with open(os.path.join(root, "runs.csv"), "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=columns)
        writer.writeheader()
        writer.writerows(rows)
    summary = summarize(rows)
    table = markdown(summary) + "\n\nWhen pruning removed every window of the object asked about:\n\n"
    table += lost_markdown(summary)
    with open(os.path.join(root, "summary.md"), "w") as f:
        f.write(table + "\n")
    plot(summary, root)
    return table


FLAGS = flags.FLAGS
flags.DEFINE_string("root", None, "the sweep's directory")


def main(argv):
    del argv
    print(aggregate(FLAGS.root))
    print(f"\nwritten: {FLAGS.root}/runs.csv, summary.md, accuracy_vs_ratio.png, accuracy_vs_flops.png")


if __name__ == "__main__":
    flags.mark_flags_as_required(["root"])
    cli.run(main)
