"""The paper's Table 1 from converted benchmark manifests: where each setting's manifest lies under a data root,
the accuracy per setting with the short, long and overall averages, and the per-sample predictions in the shape
of lmms-eval's `--log_samples` files.

Averages as the paper takes them (STTS.md section 8): the short average is the mean over the short-video
settings, the long average the mean over the long-video ones (each setting counts once, whatever its size),
and the overall average is the mean of those two (baseline: (67.0 + 59.0) / 2 = 63.0).
"""

from __future__ import annotations

import copy
import json
from collections.abc import Mapping, Sequence

import ml_collections
import numpy as np
from etils import epath

from stts_jax.benchmarks.registry import BENCHMARKS
from stts_jax.data.manifest import manifest_bytes
from stts_jax.errors import ConfigError
from stts_jax.evaluate.multiple_choice import SCORING, label

GROUPS = ("short", "long")  # Table 1's averages, in its order; a setting's group is its registry entry's
MANIFEST_SUFFIX = ".jsonl"
ALL = "all"
CONVERT = "python -m stts_jax.benchmarks.convert"


def benchmark_names(spec: str) -> list[str]:
    """--benchmarks: "all" or names of the registry, comma-separated -> the names in Table 1's order."""
    names = [n.strip() for n in spec.split(",") if n.strip()]
    if names == [ALL]:
        return list(BENCHMARKS)
    unknown = [n for n in names if n not in BENCHMARKS]
    if unknown or not names:
        raise ConfigError(
            f"--benchmarks={spec}: {'unknown ' + ', '.join(unknown) if unknown else 'no name given'}; name "
            f"settings of Table 1 comma-separated, from: {', '.join(BENCHMARKS)} (or {ALL})"
        )
    return [n for n in BENCHMARKS if n in names]


def manifest_places(data_root: str, name: str) -> list[str]:
    """Where a setting's manifest may lie under the data root, in the order they are tried: DATA_ROOT/NAME/NAME.jsonl
    (one folder per benchmark), DATA_ROOT/NAME.jsonl, then DATA_ROOT/*/NAME.jsonl (the converter README's
    DATA_ROOT/videomme/videomme_subtitles.jsonl)."""
    file = name + MANIFEST_SUFFIX
    return [f"{data_root}/{name}/{file}", f"{data_root}/{file}", f"{data_root}/*/{file}"]


def find_manifest(data_root: str, name: str) -> str | None:
    """The manifest of setting `name` under `data_root` (local or gs://), None when there is none; ConfigError
    when two folders below the root hold one."""
    root, file = epath.Path(data_root), name + MANIFEST_SUFFIX
    for path in (root / name / file, root / file):
        if path.is_file():
            return str(path)
    found = sorted(str(p) for p in root.glob(f"*/{file}") if p.is_file())
    if len(found) > 1:
        raise ConfigError(
            f"--benchmarks: {name} has {len(found)} manifests under {data_root} ({', '.join(found)}); keep one, or "
            f"put the one to evaluate at {data_root}/{name}/{file}"
        )
    return found[0] if found else None


def find_manifests(data_root: str, names: Sequence[str], skip_missing: bool) -> dict[str, str | None]:
    """The manifest of each setting (None: missing, with `skip_missing`); ConfigError naming the missing ones, where
    they were looked for and the command that writes them, without `skip_missing`."""
    if not epath.Path(data_root).is_dir():
        raise ConfigError(f"--data_root={data_root} is not a folder; pass the folder the converted manifests are in")
    manifests = {name: find_manifest(data_root, name) for name in names}
    missing = [name for name, path in manifests.items() if path is None]
    if len(missing) == len(names):
        raise ConfigError(missing_manifests(data_root, missing))
    if missing and not skip_missing:
        raise ConfigError(missing_manifests(data_root, missing) + "; or pass --skip_missing to evaluate the others")
    return manifests


def missing_manifests(data_root: str, missing: Sequence[str]) -> str:
    """One line: which settings have no manifest, where they were looked for, and the command that writes one."""
    name = missing[0] if len(missing) == 1 else "NAME"
    places = manifest_places(data_root, name)
    return (
        f"no converted manifest for {', '.join(missing)} under {data_root} (looked for {' / '.join(places)}); "
        f"convert first: {CONVERT} {name} --annotations=... --videos=... --out={places[0]} (its --help lists the "
        "files each name reads)"
    )


def benchmark_data(config: ml_collections.ConfigDict, name: str, manifest: str) -> ml_collections.ConfigDict:
    """The experiment config with the test split read from `manifest` (a built dataset named after the setting)."""
    if config.data.dataset != "manifest_video_qa":
        raise ConfigError(
            f"--benchmarks reads converted manifests, but the data config is a {config.data.dataset} one; pass "
            "--config=configs/manifest.py:variant=VARIANT,max_frames=64 for the frames and the tokenizer "
            "(--config.data.tokenizer=PATH/tokenizer.json)"
        )
    config = copy.deepcopy(config)
    config.data.test_manifest, config.data.name = manifest, name
    return config


def _mean(values: Sequence[float]) -> float | None:
    return float(np.mean(values)) if values else None


def table1(results: Mapping[str, dict | None]) -> dict:
    """Table 1 of the settings `results` names (a setting's `evaluate` results, or None: not evaluated):
    {"settings": {name: {mode: accuracy} or None}, "short" / "long" / "overall": {mode: average or None,
    "settings": the settings averaged, "of": the paper's count}}; an average over fewer settings than the paper's
    ("settings" < "of") is not comparable to the paper's."""
    settings = {
        name: None if results[name] is None else {m: results[name]["accuracy"][m] for m in SCORING}
        for name in BENCHMARKS  # Table 1's order
        if name in results
    }
    table: dict = {"settings": settings}
    for group in GROUPS:
        done = [name for name, s in settings.items() if s is not None and BENCHMARKS[name].group == group]
        paper = sum(b.group == group for b in BENCHMARKS.values())
        table[group] = {m: _mean([settings[n][m] for n in done]) for m in SCORING} | {"settings": done, "of": paper}
    averaged = [g for g in GROUPS if table[g]["settings"]]
    table["overall"] = {m: _mean([table[g][m] for g in averaged]) for m in SCORING} | {
        "settings": [n for g in averaged for n in table[g]["settings"]],
        "of": len(BENCHMARKS),
    }
    return table


def markdown_table1(table: dict, run: str, vision_tokens: float | None = None) -> str:
    """Table 1's layout: one row per scoring mode, one column per setting, then the short, long and overall
    averages (in %; "-": not evaluated; "(n/m)": averaged over n of the paper's m settings), and the mean vision
    tokens per example."""
    names = list(table["settings"])
    header = ["run", *names, "short", "long", "average", "vision tokens"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    cell = lambda value: "-" if value is None else f"{100 * value:.1f}"
    for mode in SCORING:
        cells = [cell(None if table["settings"][n] is None else table["settings"][n][mode]) for n in names]
        for average in (*GROUPS, "overall"):
            entry = table[average]
            partial = entry[mode] is not None and len(entry["settings"]) < entry["of"]
            cells.append(cell(entry[mode]) + (f" ({len(entry['settings'])}/{entry['of']})" if partial else ""))
        cells.append("-" if vision_tokens is None else f"{vision_tokens:.0f}")
        lines.append("| " + " | ".join([f"{run}, {mode}", *cells]) + " |")
    return "\n".join(lines)


def manifest_docs(manifest: str) -> dict[str, dict]:
    """The manifest's lines as written (the converter's fields: question, options, answer, family, duration, meta,
    ...), by question id; lines that are not JSON objects with an id are left out (the manifest reader skips them)."""
    docs = {}
    for raw in manifest_bytes(manifest).decode("utf-8-sig", errors="replace").splitlines():
        try:
            line = json.loads(raw)
        except ValueError:
            continue
        if isinstance(line, dict) and "id" in line:
            docs[str(line["id"])] = line
    return docs


def prediction_lines(task: str, results: dict, docs: Mapping[str, dict] | None = None) -> list[dict]:
    """One JSON object per evaluated question, in the shape of lmms-eval's `--log_samples` lines ("doc_id" the
    question's index in the evaluated split, "doc" its manifest line, "target" the answer, "resps" [[generated
    text]], "filtered_resps" [the choice read from it]), with "task" (the benchmark setting), "question_id",
    "prediction" and "correct" by scoring mode, and the frames and vision tokens the model saw."""
    docs = docs or {}
    lines = []
    for p in results["predictions"]:
        prediction = {m: label(p[m], p["yes_no"]) for m in SCORING}
        lines.append(
            {
                "doc_id": p["index"],
                "task": task,
                "question_id": p["id"],
                "doc": docs.get(p["id"], {"id": p["id"], "family": p["family"]}),
                "target": label(p["answer"], p["yes_no"]),
                "resps": [[p["generated"]]],
                "filtered_resps": [prediction["generate"]],
                "prediction": prediction,
                "correct": {m: p[m] == p["answer"] for m in SCORING},
                "frames": p["frames"],
                "vision_tokens": p["vision_tokens"],
            }
        )
    return lines
