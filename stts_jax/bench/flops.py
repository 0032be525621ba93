"""Forward FLOPs of STTS vs the unpruned model from XLA's cost analysis (compile only, abstract shapes).

  python -m stts_jax.bench.flops                          # tiny and molmo2-4b at 64 frames
  python -m stts_jax.bench.flops --variant=molmo2-4b --frames=64 --ratios 0 0.3 0.5 0.7 --json=out.json

Nothing is allocated: params and inputs are `jax.ShapeDtypeStruct`s, the forward is lowered and
compiled (layers unrolled) for this machine's backend, and `cost_analysis()["flops"]` is read off
the executable. "bound" is the speed-up the FLOP ratio allows.
"""

from __future__ import annotations

import argparse
import dataclasses
import json

import jax
import jax.numpy as jnp

from stts_jax.data.pooling import pooling_windows
from stts_jax.models import Molmo2, VideoBatch, get_config
from stts_jax.models.config import Molmo2Config, STTSConfig
from stts_jax.stts import budget, packing
from stts_jax.stts.scorer import Scorer

TIMESTAMP_TOKENS = 3  # "12.5 " is about three tokens before each frame


def prompt_length(cfg: Molmo2Config, frames: int, text_tokens: int) -> int:
    windows = len(pooling_windows(*cfg.vision.patch_grid, *cfg.adapter.pooling_size))
    return frames * (windows + 2 + TIMESTAMP_TOKENS) + text_tokens


def abstract_batch(cfg: Molmo2Config, batch: int, frames: int, seq: int) -> VideoBatch:
    v = cfg.vision
    windows = pooling_windows(*v.patch_grid, *cfg.adapter.pooling_size)
    ints = lambda *shape: jax.ShapeDtypeStruct(shape, jnp.int32)
    return VideoBatch(
        input_ids=ints(batch, seq),
        segment_ids=ints(batch, seq),
        positions=ints(batch, seq),
        pixel_values=jax.ShapeDtypeStruct((batch, frames, v.num_patches, v.patch_dim), jnp.dtype(cfg.dtype)),
        pooling_idx=ints(batch, frames * len(windows), windows.shape[1]),
        frame_video_ids=ints(batch, frames),
    )


def forward_flops(cfg: Molmo2Config, batch: VideoBatch) -> float:
    # Unrolled: XLA's cost analysis counts a while-loop (lax.scan) body once, not once per layer.
    model = Molmo2(cfg.replace(scan_layers=False))
    rngs = {"params": jax.random.key(0), "stts": jax.random.key(1)}
    params = jax.eval_shape(lambda b: model.init(rngs, b)["params"], batch)
    forward = jax.jit(lambda p, b: model.apply({"params": p}, b, rngs={"stts": jax.random.key(1)})[0])
    return float(forward.lower(params, batch).compile().cost_analysis()["flops"])


def scorer_flops(cfg: Molmo2Config, batch: int, frames: int) -> float:
    v = cfg.vision
    windows = pooling_windows(*v.patch_grid, *cfg.adapter.pooling_size)
    patches = jax.ShapeDtypeStruct((batch, frames, *windows.shape, v.hidden_size), jnp.dtype(cfg.dtype))
    times = jax.ShapeDtypeStruct((batch, frames), jnp.int32)
    valid = jnp.asarray(windows >= 0)
    scorer = Scorer(cfg)
    params = jax.eval_shape(lambda x, t: scorer.init(jax.random.key(0), x, valid, t)["params"], patches, times)
    run = jax.jit(lambda p, x, t: scorer.apply({"params": p}, x, valid, t))
    return float(run.lower(params, patches, times).compile().cost_analysis()["flops"])


def rows(variant: str, frames: int, batch: int, text_tokens: int, ratios: list[float]) -> list[dict]:
    base = get_config(variant)
    seq = prompt_length(base, frames, text_tokens)
    windows = len(pooling_windows(*base.vision.patch_grid, *base.adapter.pooling_size))
    window_patches = base.adapter.pooling_size[0] * base.adapter.pooling_size[1]
    unpruned = forward_flops(base, abstract_batch(base, batch, frames, seq))
    scorer = scorer_flops(base, batch, frames)
    table = []
    for ratio in ratios:
        pruned_seq = seq - budget.pruned_windows(frames, windows, ratio)
        cfg = dataclasses.replace(
            base, stts=STTSConfig(method="stts", prune_ratio=ratio, llm_seq_len=pruned_seq)
        ).validate()
        flops = forward_flops(cfg, abstract_batch(cfg, batch, frames, seq))
        capacity = budget.kept_capacity(frames, windows, ratio, 1)
        slots = packing.buffer_size(capacity, window_patches, base.vision.num_patches)
        kept = budget.kept_windows(frames, windows, ratio) * window_patches
        table.append(
            {
                "variant": variant,
                "frames": frames,
                "batch": batch,
                "prune_ratio": ratio,
                "method": "stts",
                "mode": "forward",
                "llm_tokens": pruned_seq,
                "flops": flops,
                "flops_unpruned": unpruned,
                "flop_ratio_vs_unpruned": flops / unpruned,
                "speedup_bound": unpruned / flops,
                "packing_efficiency": kept / slots,
                "scorer_flops_share": scorer / flops,
                "device": jax.devices()[0].device_kind,
            }
        )
    return table


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m stts_jax.bench.flops", description=__doc__.splitlines()[0])
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
    if args.json:
        with open(args.json, "w") as f:
            json.dump(table, f, indent=2)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
