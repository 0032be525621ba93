"""Forward FLOPs of STTS vs the unpruned model from XLA's cost analysis (compile only, abstract shapes).

  python -m stts_jax.bench flops                          # tiny and molmo2-4b at 64 frames
  python -m stts_jax.bench flops --variant=molmo2-4b --frames=64 --ratios 0 0.3 0.5 0.7 --json=out.json

Nothing is allocated: params and inputs are `jax.ShapeDtypeStruct`s, the forward is lowered and
compiled (layers unrolled) for this machine's backend, and `cost_analysis()["flops"]` is read off
the executable. "bound" is the speed-up the FLOP ratio allows.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable

import jax

from stts_jax.bench import report
from stts_jax.bench.workload import (
    abstract_batch,
    method_config,
    packing_efficiency,
    prompt_length,
    row_layout,
    scorer_inputs,
)
from stts_jax.models import get_config
from stts_jax.models.config import Molmo2Config
from stts_jax.stts.scorer import Scorer
from stts_jax.train.step import flops_twin, lowered_flops
from stts_jax.vlm.model import Molmo2, VideoBatch

__all__ = ["abstract_batch", "forward_flops", "program_model_flops", "prompt_length", "rows", "scorer_flops"]


def program_model_flops(make_program: Callable[[Molmo2Config], Callable], cfg: Molmo2Config, *args) -> float:
    """Model FLOPs of the program `make_program(cfg)` on `args`, counted as `train.step.model_flops` counts
    the train step's (the `flops_twin` of `cfg`, lowered; jit drops outputs no one reads)."""
    return lowered_flops(jax.jit(make_program(flops_twin(cfg))), *args)


def forward_flops(cfg: Molmo2Config, batch: VideoBatch) -> float:
    # Unrolled: XLA's cost analysis counts a while-loop (lax.scan) body once, not once per layer.
    model = Molmo2(cfg.replace(scan_layers=False))
    rngs = {"params": jax.random.key(0), "stts": jax.random.key(1)}
    params = jax.eval_shape(lambda b: model.init(rngs, b)["params"], batch)
    forward = jax.jit(lambda p, b: model.apply({"params": p}, b, rngs={"stts": jax.random.key(1)})[0])
    return float(forward.lower(params, batch).compile().cost_analysis()["flops"])


def scorer_flops(cfg: Molmo2Config, batch: int, frames: int) -> float:
    patches, valid, times = scorer_inputs(cfg, batch, frames)
    scorer = Scorer(cfg)
    params = jax.eval_shape(lambda x, t: scorer.init(jax.random.key(0), x, valid, t)["params"], patches, times)
    run = jax.jit(lambda p, x, t: scorer.apply({"params": p}, x, valid, t))
    return report.flops(run.lower(params, patches, times).compile())


def rows(variant: str, frames: int, batch: int, text_tokens: int, ratios: list[float]) -> list[dict]:
    base = get_config(variant)
    seq = prompt_length(base, frames, text_tokens)
    unpruned = forward_flops(base, abstract_batch(base, batch, frames, seq))
    scorer = scorer_flops(base, batch, frames)
    table = []
    for ratio in ratios:
        cfg = method_config(base, ratio)
        layout = row_layout(cfg, frames, text_tokens)
        flops = forward_flops(cfg, abstract_batch(cfg, batch, frames, seq, layout))
        table.append(
            {
                "setup": f"{frames} frames x batch {batch}, text {text_tokens}",
                "variant": variant,
                "frames": frames,
                "batch": batch,
                "prune_ratio": ratio,
                "method": "stts",
                "mode": "forward",
                "llm_tokens": layout.llm_seq_len,
                "flops": flops,
                "flops_unpruned": unpruned,
                "seconds_per_step": None,  # compiled only
                "speedup_vs_unpruned": None,
                "flop_ratio_vs_unpruned": flops / unpruned,
                "speedup_bound": unpruned / flops,
                "packing_efficiency": packing_efficiency(cfg, frames, ratio),
                "peak_memory_bytes": None,
                "scorer_flops_share": scorer / flops,
                "device": f"compile only ({report.device_name()})",
            }
        )
    return table


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m stts_jax.bench flops", description=__doc__.splitlines()[0])
    parser.add_argument("--variant", nargs="+", default=["tiny", "molmo2-4b"])
    parser.add_argument("--frames", type=int, default=64)
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--text_tokens", type=int, default=256)
    parser.add_argument("--ratios", type=float, nargs="+", default=[0.0, 0.3, 0.5, 0.7])
    parser.add_argument("--json", default=None, help="write the rows here")
    args = parser.parse_args(argv)
    table = [r for v in args.variant for r in rows(v, args.frames, args.batch, args.text_tokens, args.ratios)]
    header = f"{'variant':<10} {'frames':>6} {'k':>4} {'LLM tok':>8} {'GFLOPs':>12} {'ratio':>6} {'bound':>6} "
    print(header + f"{'packing':>8} {'scorer':>7}")
    for r in table:
        print(
            f"{r['variant']:<10} {r['frames']:>6} {r['prune_ratio']:>4} {r['llm_tokens']:>8} {r['flops'] / 1e9:>12.1f} "
            f"{r['flop_ratio_vs_unpruned']:>6.3f} {r['speedup_bound']:>6.2f} {r['packing_efficiency']:>8.3f} "
            f"{r['scorer_flops_share']:>7.2%}"
        )
    report.write_json(table, args.json)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
