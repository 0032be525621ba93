"""Our forward against transformers' Molmo2 in PyTorch: same config, weights and inputs, same CPU.

  python -m stts_jax.bench torch                         # small, 4 and 16 frames, torch on 2 threads
  python -m stts_jax.bench torch --variant small --frames 16 64 --threads 2 --json torch.json

transformers' `Molmo2ForConditionalGeneration` gets random weights (`convert.reference.random_hf_molmo2`),
is saved with `save_pretrained` and loaded into ours with `convert.hf.load_molmo2`, the path a user
takes. Both run the processor-format prompt of `convert.reference.video_prompt` (one video per row,
logits at every position, no pruning). Ours is timed jitted, with the layers scanned (the default)
and unrolled; PyTorch in eager mode under `inference_mode`, on `--threads` threads (XLA:CPU uses
every core). The three run in interleaved rounds after warm-up; `speedup_vs_torch` is the median of
the per-round ratios, and the logits of both are compared once.
"""

from __future__ import annotations

import argparse
import tempfile

import jax
import numpy as np

from stts_jax.accelerators import peak_memory_bytes
from stts_jax.bench import report
from stts_jax.convert.hf import batch_from_hf_inputs, load_molmo2
from stts_jax.convert.reference import random_hf_molmo2, torch_inputs, video_prompt
from stts_jax.models import get_config
from stts_jax.vlm.model import Molmo2

PROGRAMS = ("jax, layers scanned", "jax, layers unrolled", "pytorch eager")


def measure(variant: str, frames_list: list[int], batch_size: int, repeats: int, warmup: int, threads: int):
    import torch
    import transformers

    transformers.utils.logging.disable_progress_bar()
    torch.set_num_threads(threads)
    model = random_hf_molmo2(get_config(variant))
    with tempfile.TemporaryDirectory() as path:
        model.save_pretrained(path)
        cfg, host_params = load_molmo2(path)
    params = jax.device_put(host_params)
    rows = []
    for frames in frames_list:
        inputs = video_prompt(cfg, [frames] * batch_size)
        batch = batch_from_hf_inputs(cfg, inputs)
        jax_programs = {}
        for name, scan in zip(PROGRAMS[:2], (True, False), strict=True):
            run_cfg = cfg.replace(scan_layers=scan)
            forward = jax.jit(lambda p, b, c=run_cfg: Molmo2(c).apply({"params": p}, b)[0])
            jax_programs[name] = forward.lower(params, batch).compile()
        pt = torch_inputs(inputs)

        def torch_forward(pt=pt):
            with torch.inference_mode():
                return model(**pt).logits

        runs = {n: (lambda c=c, b=batch: jax.block_until_ready(c(params, b))) for n, c in jax_programs.items()}
        runs[PROGRAMS[2]] = torch_forward
        load_before = report.load_average()
        times = report.interleaved_times(runs, repeats, warmup)
        load_after = report.load_average()
        valid = inputs["attention_mask"] == 1
        theirs = torch_forward().numpy()
        ours = np.asarray(jax_programs[PROGRAMS[0]](params, batch))
        difference = float(np.abs(ours - theirs)[valid].max() / np.abs(theirs)[valid].max())
        unrolled_flops = report.flops(jax_programs[PROGRAMS[1]])
        for name in PROGRAMS:
            compiled = jax_programs.get(name)
            rows.append(
                {
                    "setup": f"{frames} frames x batch {batch_size}, forward (JAX vs PyTorch)",
                    "variant": variant,
                    "frames": frames,
                    "batch": batch_size,
                    "prune_ratio": 0.0,
                    "method": "none",
                    "mode": "forward",
                    "program": name,
                    "llm_tokens": int(inputs["input_ids"].shape[1]),
                    "flops": None if compiled is None else unrolled_flops,
                    "seconds_per_step": float(np.median(times[name])),
                    "seconds": times[name],
                    "speedup_vs_unpruned": None,
                    "flop_ratio_vs_unpruned": None,
                    "speedup_vs_torch": report.paired_speedup(times[PROGRAMS[2]], times[name]),
                    "packing_efficiency": None,
                    "peak_memory_bytes": None if compiled is None else peak_memory_bytes(compiled),
                    "device": report.device_name(),
                    "torch_threads": threads,
                    "torch_attention": model.config._attn_implementation,
                    "relative_logit_difference": difference,
                    "load_average": [load_before, load_after],
                }
            )
    return rows


COLUMNS = [
    ("variant", "<", lambda r: r["variant"]),
    ("frames", ">", lambda r: str(r["frames"])),
    ("batch", ">", lambda r: str(r["batch"])),
    ("tokens", ">", lambda r: str(r["llm_tokens"])),
    ("program", "<", lambda r: r["program"]),
    ("s/forward", ">", report.number("seconds_per_step", ".3f")),
    ("speed-up vs torch", ">", report.number("speedup_vs_torch", ".2f")),
    ("GFLOP/s", ">", lambda r: "-" if r["flops"] is None else f"{r['flops'] / r['seconds_per_step'] / 1e9:.1f}"),
    ("peak GB", ">", report.number("peak_memory_bytes", ".2f", 1e-9)),
    ("max |logit diff| / max |logit|", ">", report.number("relative_logit_difference", ".1e")),
]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m stts_jax.bench torch", description=__doc__.splitlines()[0])
    parser.add_argument("--variant", default="small")
    parser.add_argument("--frames", type=int, nargs="+", default=[4, 16])
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--threads", type=int, default=2, help="torch.set_num_threads")
    parser.add_argument("--json", default=None, help="write the rows here")
    args = parser.parse_args(argv)
    rows = measure(args.variant, args.frames, args.batch, args.repeats, args.warmup, args.threads)
    report.write_json(rows, args.json)
    report.print_table(rows, COLUMNS)
    loads = [x for r in rows for x in r["load_average"]]
    print(
        f"device: {rows[0]['device']}; torch threads {args.threads}, attention {rows[0]['torch_attention']!r}; "
        f"1-minute load average during the runs: {min(loads):.2f} .. {max(loads):.2f}"
    )
    return 0
