"""The paper's efficiency setups for `molmo2-4b`: train-step and prefill FLOP ratios next to its speed-ups.

  python -m stts_jax.bench paper --json paper.json          # 64 frames x batch 2 and 256 x 1, text 2048

STTS.md section 8 reports throughput speed-ups on 8 H100 (no LLM packing, text up to 2048 tokens).
Here the same shapes are compiled with abstract params and inputs (nothing is allocated) and XLA's
cost analysis gives the FLOPs of the train step (`stts_jax.train.step.train_step`, remat as in
`--remat`) and of the prefill (`step.prefill_fn`), layers unrolled. Their ratio against the
unpruned model is the speed-up that compute alone allows; the paper's measured one sits beside it.
"""

from __future__ import annotations

import argparse

import jax
import jax.numpy as jnp

from stts_jax.bench import report, step, workload
from stts_jax.models import get_config
from stts_jax.models.config import Molmo2Config
from stts_jax.train.optimizer import OptimizerConfig, make_optimizer
from stts_jax.train.step import init_state, train_step
from stts_jax.vlm.model import param_shapes

# STTS.md section 8: (frames, batch) -> {k: (tokens per batch, training speed-up, inference speed-up)};
# k = None is the unpruned model.
PAPER = {
    (64, 2): {None: (15670, 1.0, 1.0), 0.3: (12560, 1.28, 1.14), 0.4: (11524, 1.44, 1.30), 0.5: (10486, 1.62, 1.61)},
    (256, 1): {None: (25307, 1.0, 1.0), 0.3: (19087, 1.48, 1.45), 0.4: (17013, 1.78, 1.71), 0.5: (14939, 2.25, 2.22)},
}


def program_flops(cfg: Molmo2Config, mode: str, batch_size: int, frames: int, text_tokens: int) -> float:
    """FLOPs of one train step or prefill of `cfg` (layers unrolled) at abstract shapes."""
    cfg = cfg.replace(scan_layers=False)
    seq = workload.prompt_length(cfg, frames, text_tokens)
    batch = workload.abstract_batch(cfg, batch_size, frames, seq, workload.row_layout(cfg, frames, text_tokens))
    if mode == "prefill":
        params = jax.eval_shape(lambda b: step.init_params(cfg, b), batch)
        return report.flops(jax.jit(step.prefill_fn(cfg)).lower(params, batch).compile())
    optimizer = make_optimizer(OptimizerConfig(), param_shapes(cfg))
    state = jax.eval_shape(lambda b: init_state(cfg, optimizer, b, seed=0), batch)
    targets = jax.ShapeDtypeStruct(batch.input_ids.shape, jnp.int32)
    return report.flops(train_step.lower(cfg, optimizer, state, batch, targets).compile())


def rows(
    variant: str, frames: int, batch_size: int, text_tokens: int, ratios: list[float], modes: list[str], remat: str
) -> list[dict]:
    base = get_config(variant, remat_policy=remat)
    is_paper_setup = variant == "molmo2-4b" and text_tokens == 2048  # else the paper's figures do not apply
    paper = PAPER.get((frames, batch_size), {}) if is_paper_setup else {}
    names = step.config_names(ratios)
    table = []
    for mode in modes:
        counts = {
            name: program_flops(workload.method_config(base, k), mode, batch_size, frames, text_tokens)
            for name, k in names.items()
        }
        for name, k in names.items():
            tokens, train_speedup, inference_speedup = paper.get(k, (None, None, None))
            cfg = workload.method_config(base, k)
            layout = workload.row_layout(cfg, frames, text_tokens)
            table.append(
                {
                    "setup": f"{frames} frames x batch {batch_size}, text {text_tokens}",
                    "variant": variant,
                    "frames": frames,
                    "batch": batch_size,
                    "prune_ratio": 0.0 if k is None else k,
                    "method": cfg.stts.method,
                    "mode": mode,
                    "llm_tokens": batch_size * (layout.llm_seq_len or workload.prompt_length(cfg, frames, text_tokens)),
                    "flops": counts[name],
                    "seconds_per_step": None,  # compiled only: this machine cannot run molmo2-4b at these shapes
                    "speedup_vs_unpruned": None,
                    "flop_ratio_vs_unpruned": counts[name] / counts["unpruned"],
                    "packing_efficiency": None if k is None else workload.packing_efficiency(cfg, frames, k),
                    "peak_memory_bytes": None,  # an XLA:CPU buffer plan says nothing about an accelerator's
                    "device": f"compile only ({report.device_name()})",
                    "program": f"layers unrolled, remat {remat}" if mode == "train" else "layers unrolled",
                    "paper_tokens": tokens,
                    "paper_speedup": train_speedup if mode == "train" else inference_speedup,
                }
            )
    return table


COLUMNS = [
    ("setup", "<", lambda r: r["setup"]),
    ("mode", "<", lambda r: r["mode"]),
    ("k", ">", lambda r: "-" if r["method"] == "none" else f"{r['prune_ratio']}"),
    ("LLM tokens", ">", lambda r: str(r["llm_tokens"])),
    ("paper tokens", ">", report.number("paper_tokens", ".0f")),
    ("TFLOPs", ">", report.number("flops", ",.1f", 1e-12)),
    ("FLOP ratio", ">", report.number("flop_ratio_vs_unpruned", ".3f")),
    ("FLOP bound", ">", lambda r: f"{1 / r['flop_ratio_vs_unpruned']:.2f}"),
    ("paper speed-up", ">", report.number("paper_speedup", ".2f")),
    ("packing", ">", report.number("packing_efficiency", ".3f")),
]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m stts_jax.bench paper", description=__doc__.splitlines()[0])
    parser.add_argument("--variant", default="molmo2-4b")
    parser.add_argument("--setups", nargs="+", default=["64x2", "256x1"], help="FRAMESxBATCH")
    parser.add_argument("--text_tokens", type=int, default=2048)
    parser.add_argument("--ratios", type=float, nargs="+", default=[0.3, 0.4, 0.5])
    parser.add_argument("--modes", nargs="+", choices=["train", "prefill"], default=["train", "prefill"])
    parser.add_argument("--remat", default="full", help="remat policy of the train step")
    parser.add_argument("--json", default=None, help="write the rows here")
    args = parser.parse_args(argv)
    table = []
    for setup in args.setups:
        frames, batch_size = (int(x) for x in setup.split("x"))
        table += rows(args.variant, frames, batch_size, args.text_tokens, args.ratios, args.modes, args.remat)
        report.write_json(table, args.json)
    report.print_table(table, COLUMNS)
    return 0
