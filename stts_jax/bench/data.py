"""Input-pipeline throughput on this machine, next to the model's train step.

  python -m stts_jax.bench data [--batches 20] [--variants tiny small]

Builds a small synthetic set and a manifest of mp4 files written with PyAV (in a temporary
directory), runs the grain pipeline (decode -> preprocess -> pack -> batch) and prints examples/s,
then times `stts_jax.train.step.train_step` (loss, gradients, AdamW update) of each variant with
STTS on the same batches.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time

import jax
import numpy as np
import tensorflow_datasets as tfds

from stts_jax.bench import report
from stts_jax.data.builders import ManifestBuilderConfig, SyntheticBuilderConfig, build_manifest, build_synthetic
from stts_jax.data.clips import ClipSettings
from stts_jax.data.pipeline import PipelineConfig, make_dataset, to_model_batch
from stts_jax.data.synthetic import SyntheticConfig, generate_example
from stts_jax.data.tokenizer import synthetic_tokenizer
from stts_jax.models import get_config
from stts_jax.models.config import STTSConfig
from stts_jax.train.optimizer import OptimizerConfig, make_optimizer
from stts_jax.train.step import init_state, train_step
from stts_jax.vlm.model import param_shapes


def write_manifest(root: str, count: int, synthetic: SyntheticConfig) -> str:
    """`count` synthetic videos as mp4 files (PyAV) and their JSONL manifest."""
    import av

    lines = []
    for i in range(count):
        ex = generate_example(7, i, synthetic)
        path = os.path.join(root, f"video_{i}.mp4")
        with av.open(path, "w") as container:
            stream = container.add_stream("mpeg4", rate=int(synthetic.fps * 4))
            stream.height, stream.width = ex["video"].shape[1:3]
            stream.pix_fmt = "yuv420p"
            for frame in np.repeat(ex["video"], 4, axis=0):  # 8 fps source, sampled back to 2 fps
                for packet in stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")):
                    container.mux(packet)
            for packet in stream.encode():
                container.mux(packet)
        lines.append(
            {
                "id": ex["id"],
                "video": os.path.basename(path),
                "question": ex["question"],
                "options": ex["options"],
                "answer": int(ex["answer"]),
            }
        )
    manifest = os.path.join(root, "train.jsonl")
    with open(manifest, "w") as f:
        f.write("\n".join(json.dumps(x) for x in lines) + "\n")
    return manifest


def count_examples(batch: dict) -> int:
    """Examples in a packed batch: distinct segment ids per row."""
    return sum(len(np.unique(row[row > 0])) for row in batch["input_ids_segment_ids"])


def pipeline_rate(source, model_cfg, pipeline, tokenizer, batches: int) -> tuple[float, list]:
    ds, _ = make_dataset(source, model_cfg, pipeline, tokenizer)
    it = iter(ds)
    kept = [next(it)]  # warm-up
    start = time.perf_counter()
    examples = 0
    for _ in range(batches):
        batch = next(it)
        examples += len(
            set(
                zip(
                    np.nonzero(batch["input_ids_segment_ids"])[0],
                    batch["input_ids_segment_ids"][batch["input_ids_segment_ids"] > 0],
                    strict=True,
                )
            )
        )
        kept.append(batch)
    return examples / (time.perf_counter() - start), kept


def step_rate(model_cfg, pipeline: PipelineConfig, batches: list) -> tuple[float, float]:
    """(examples/s, median seconds per step) of `stts_jax.train.step.train_step` (loss, gradients,
    AdamW update) on `batches` of `pipeline`."""
    video, targets = to_model_batch(batches[0], model_cfg, pipeline.layout)
    optimizer = make_optimizer(OptimizerConfig(), param_shapes(model_cfg))
    state, _ = train_step(model_cfg, optimizer, init_state(model_cfg, optimizer, video, seed=0), video, targets)
    jax.block_until_ready(state)  # compiled and warmed up
    times = []
    for batch in batches[1:]:
        video, targets = to_model_batch(batch, model_cfg, pipeline.layout)
        start = time.perf_counter()
        state, metrics = train_step(model_cfg, optimizer, state, video, targets)
        jax.block_until_ready((state, metrics))
        times.append(time.perf_counter() - start)
    seconds = statistics.median(times)
    return statistics.mean(count_examples(b) for b in batches) / seconds, seconds


def keeps_up(row: dict) -> bool:
    return row["pipeline_examples_per_second"] >= row["step_examples_per_second"]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m stts_jax.bench data", description=__doc__.splitlines()[0])
    parser.add_argument("--batches", type=int, default=20)
    parser.add_argument("--variants", nargs="+", default=["tiny", "small"])
    parser.add_argument("--json", default=None, help="write the rows here")
    args = parser.parse_args(argv)
    synthetic = SyntheticConfig(frames=8, size=64)
    tokenizer = synthetic_tokenizer(synthetic.vocabulary())
    pipeline = PipelineConfig(batch_size=4, max_frames=16, llm_seq_len=768, prune_ratio=0.5, max_videos_per_row=2)
    stts = STTSConfig(method="stts", prune_ratio=0.5, layer=1)
    rows = []
    with tempfile.TemporaryDirectory() as root:
        build_synthetic(root, SyntheticBuilderConfig(name="bench", synthetic=synthetic, num_examples=(("train", 200),)))
        manifest = write_manifest(root, 40, synthetic)
        for variant in args.variants:
            model_cfg = get_config(variant, stts=stts)
            stored = ClipSettings(max_frames=synthetic.frames, image_size=model_cfg.vision.image_size[0])
            sources = {
                "synthetic (array_record)": tfds.data_source("synthetic_video_qa/bench", data_dir=root, split="train"),
                "manifest of mp4": build_manifest(
                    root, ManifestBuilderConfig(name=f"bench_{variant}", manifest=manifest, clips=stored)
                ),
            }
            rates = {}
            for name, source in sources.items():
                rates[name], batches = pipeline_rate(source, model_cfg, pipeline, tokenizer, args.batches)
            step_examples, step_seconds = step_rate(model_cfg, pipeline, batches)
            rows += [
                {
                    "setup": f"input pipeline: {name}",
                    "variant": variant,
                    "frames": pipeline.max_frames,
                    "batch": pipeline.batch_size,
                    "prune_ratio": stts.prune_ratio,
                    "method": stts.method,
                    "mode": "train",
                    "flops": None,
                    "seconds_per_step": step_seconds,
                    "speedup_vs_unpruned": None,
                    "flop_ratio_vs_unpruned": None,
                    "packing_efficiency": None,
                    "peak_memory_bytes": None,
                    "device": report.device_name(),
                    "pipeline_examples_per_second": rate,
                    "step_examples_per_second": step_examples,
                }
                for name, rate in rates.items()
            ]
    report.write_json(rows, args.json)
    report.print_table(
        rows,
        [
            ("model", "<", lambda r: r["variant"]),
            ("source", "<", lambda r: r["setup"].removeprefix("input pipeline: ")),
            ("pipeline ex/s", ">", report.number("pipeline_examples_per_second", ".1f")),
            ("train step ex/s", ">", report.number("step_examples_per_second", ".1f")),
            (
                "keeps up",
                ">",
                lambda r: "yes" if r["pipeline_examples_per_second"] >= r["step_examples_per_second"] else "no",
            ),
        ],
    )
    print(
        f"device: {report.device_name()}, one process; batch {pipeline.batch_size} rows of {pipeline.llm_seq_len} "
        f"LLM tokens after pruning / {pipeline.max_frames} frame slots, k = 0.5"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
