"""Input-pipeline throughput on this machine, next to the model's train step, and the training loop's
step time with real input against the same loop on batches held on the devices.

  python -m stts_jax.bench data [--parts pipeline loop] [--batches 20] [--variants tiny small]

pipeline: builds a small synthetic set and a manifest of mp4 files written with PyAV (in a temporary
directory), runs the grain pipeline (decode -> preprocess -> pack -> batch) and prints examples/s,
then times `stts_jax.train.step.train_step` (loss, gradients, AdamW update) of each variant with
STTS on the same batches.

loop: runs `stts_jax.train.loop.train` (configs/synthetic.py) with its real input (grain, a background
thread preparing device batches) and with `train.preload_batches` (the first batches held on the
devices, repeated), in alternating rounds, and prints the paired ratio of their median step times.
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
from stts_jax.experiments import synthetic as synthetic_experiment
from stts_jax.models import get_config
from stts_jax.models.config import STTSConfig
from stts_jax.train.loop import train
from stts_jax.train.metrics import train_series
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


LOOP_WARMUP_STEPS = 3  # steps of each run left out of its median (the first ones after the compile)
PRELOADED_BATCHES = 4


def loop_runs(root: str, variant: str, frames: int, steps: int, rounds: int) -> list[dict]:
    """`rounds` pairs of training runs of `steps` steps, real input and preloaded batches in alternating
    order; per round the median step time of each (warm-up steps left out), their ratio and the real
    input's median wait for a batch."""
    config = synthetic_experiment.get_config(f"variant={variant},frames={frames}")
    config.data.data_dir = os.path.join(root, "data")
    config.train.update(steps=steps, checkpoint_every=steps, eval_every=0)
    median = lambda run, name: statistics.median(train_series(run, name)[LOOP_WARMUP_STEPS:])
    results = []
    for i in range(rounds):
        seconds = {}
        for preload in (0, PRELOADED_BATCHES)[:: 1 if i % 2 == 0 else -1]:
            run = os.path.join(root, f"{variant}_{frames}_{i}_{preload}")
            config.train.preload_batches = preload
            train(config, run, progress=False)
            seconds[preload] = median(run, "step_seconds")
            if not preload:
                wait = median(run, "input_wait_seconds")
        results.append({"real": seconds[0], "preloaded": seconds[PRELOADED_BATCHES], "input_wait": wait})
    return results


def loop_rows(variants: list[str], frames: int, steps: int, rounds: int) -> list[dict]:
    rows = []
    with tempfile.TemporaryDirectory() as root:
        for variant in variants:
            runs = loop_runs(root, variant, frames, steps, rounds)
            real, preloaded = [r["real"] for r in runs], [r["preloaded"] for r in runs]
            rows.append(
                {
                    "setup": "training loop: real input vs preloaded batches",
                    "variant": variant,
                    "frames": frames,
                    "batch": synthetic_experiment.get_config().data.batch_size,
                    "prune_ratio": 0.5,
                    "method": "stts",
                    "mode": "train",
                    "flops": None,
                    "seconds_per_step": statistics.median(real),
                    "preloaded_seconds_per_step": statistics.median(preloaded),
                    "real_over_preloaded": report.paired_speedup(real, preloaded),  # median of the rounds' ratios
                    "round_ratios": [r / p for r, p in zip(real, preloaded, strict=True)],
                    "input_wait_seconds": statistics.median(r["input_wait"] for r in runs),
                    "speedup_vs_unpruned": None,
                    "flop_ratio_vs_unpruned": None,
                    "packing_efficiency": None,
                    "peak_memory_bytes": None,
                    "device": report.device_name(),
                }
            )
    report.print_table(
        rows,
        [
            ("model", "<", lambda r: r["variant"]),
            ("frames", ">", lambda r: str(r["frames"])),
            ("real input s/step", ">", report.number("seconds_per_step", ".3f")),
            ("preloaded s/step", ">", report.number("preloaded_seconds_per_step", ".3f")),
            ("real / preloaded", ">", report.number("real_over_preloaded", ".3f")),
            ("per round", "<", lambda r: " ".join(f"{x:.3f}" for x in r["round_ratios"])),
            ("input wait s", ">", report.number("input_wait_seconds", ".4f")),
        ],
    )
    print(
        f"device: {report.device_name()}, one process; configs/synthetic.py, {steps} steps per run (the first "
        f"{LOOP_WARMUP_STEPS} left out), {rounds} rounds; preloaded: {PRELOADED_BATCHES} batches on the devices"
    )
    return rows


def pipeline_rows(variants: list[str], batches: int) -> list[dict]:
    synthetic = SyntheticConfig(frames=8, size=64)
    tokenizer = synthetic_tokenizer(synthetic.vocabulary())
    pipeline = PipelineConfig(batch_size=4, max_frames=16, llm_seq_len=768, prune_ratio=0.5, max_videos_per_row=2)
    stts = STTSConfig(method="stts", prune_ratio=0.5, layer=1)
    rows = []
    with tempfile.TemporaryDirectory() as root:
        build_synthetic(root, SyntheticBuilderConfig(name="bench", synthetic=synthetic, num_examples=(("train", 200),)))
        manifest = write_manifest(root, 40, synthetic)
        for variant in variants:
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
                rates[name], batches = pipeline_rate(source, model_cfg, pipeline, tokenizer, batches)
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
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m stts_jax.bench data", description=__doc__.splitlines()[0])
    parser.add_argument("--parts", nargs="+", choices=["pipeline", "loop"], default=["pipeline", "loop"])
    parser.add_argument("--batches", type=int, default=20, help="pipeline: batches timed")
    parser.add_argument("--variants", nargs="+", default=["tiny", "small"])
    parser.add_argument("--frames", type=int, default=16, help="loop: frames per video")
    parser.add_argument("--steps", type=int, default=20, help="loop: steps per training run")
    parser.add_argument("--rounds", type=int, default=2, help="loop: pairs of runs (real input, preloaded)")
    parser.add_argument("--json", default=None, help="write the rows here")
    args = parser.parse_args(argv)
    rows = []
    if "pipeline" in args.parts:
        rows += pipeline_rows(args.variants, args.batches)
    if "loop" in args.parts:
        rows += loop_rows(args.variants, args.frames, args.steps, args.rounds)
    report.write_json(rows, args.json)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
