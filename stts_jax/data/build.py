"""Build a config's datasets ahead of training: python -m stts_jax.data.build --config=configs/FILE.py[:ARGS]
[--config.data.*=...]. Every split the config names is built (worker processes: data.build_workers, with a
progress bar) or reused when already built; a summary per split follows. Training builds on first use too.
"""

from __future__ import annotations

import time

from absl import flags
from ml_collections import config_flags

from stts_jax import cli
from stts_jax.data.sources import MANIFEST_FIELDS, split_source

config_flags.DEFINE_config_file("config", None, "experiment config file (configs/*.py:args)", lock_config=True)
flags.mark_flags_as_required(["config"])


def splits_of(data) -> list[str]:
    """The splits a config's dataset has: those with a manifest, or the synthetic set's non-empty ones."""
    if data.dataset == "manifest_video_qa":
        return [split for split, field in MANIFEST_FIELDS.items() if data.get(field)]
    counts = {"train": data.train_examples, "validation": data.eval_examples, "test": data.test_examples}
    return [split for split, n in counts.items() if n > 0]


def summary_line(split: str, built, seconds: float) -> str:
    """One split: examples, and for a manifest its clips, bytes stored, skips by kind, the build's time."""
    parts = [f"{split:<11} {len(built):>9} examples"]
    report = getattr(built, "report", {})
    if "clips" in report:
        parts.append(f"{report['clips']} clips in {report['clip_bytes'] / 2**20:.1f} MiB")
    if "skipped" in report:
        skipped = report["skipped"]
        parts.append(f"skipped {sum(skipped.values())}" + (f" {dict(sorted(skipped.items()))}" if skipped else ""))
    if "seconds" in report:
        parts.append(f"built in {report['seconds']:.1f} s")
    return ", ".join(parts) + f" (this command: {seconds:.1f} s)"


def main(argv) -> int:
    del argv
    config = flags.FLAGS.config
    lines = []
    for split in splits_of(config.data):
        start = time.perf_counter()
        built = split_source(config, split)
        lines.append(summary_line(split, built, time.perf_counter() - start))
    print(f"{config.data.dataset} in {config.data.data_dir}:")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    cli.run(main)
