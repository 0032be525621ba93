"""Training-step and prefill throughput with and without STTS, side by side in one process.

  python -m stts_jax.bench step                                   # small, 16 and 64 frames, k 0 .. 0.7
  python -m stts_jax.bench step --variant small --frames 128 --ratios 0.5 --repeats 3 --json step.json

For every number of frames, the unpruned model and STTS at each ratio k run on the same batch (one
video per row, `workload.synthetic_batch`). Programs are compiled first, then timed in interleaved
rounds after warm-up; `seconds_per_step` is the median, `speedup_vs_unpruned` the median of the
per-round ratios. Modes:

- train: `stts_jax.train.step.train_step` (loss, gradients, AdamW update), by default with the
  layers scanned and each block rematerialised (`--remat full`, as the large-scale configs train;
  XLA:CPU honours remat only inside a scan, and without it its buffers for 64 frames of `small`
  exceed 20 GB); `--no-scan` times the unrolled step.
- prefill: the forward pass that fills the KV cache and gives the next-token logits, layers
  unrolled. It also times its two halves apart (unless `--no-split`): the vision side, i.e. the ViT
  with STTS, connector and compaction (`Molmo2.prepare`), and the LLM on the compacted sequence
  (`Molmo2.llm`); and the STTS scorer alone (their FLOPs: XLA's count of the timed executables).

`flops` are model FLOPs, whatever the timed program recomputes or hides from XLA's count: for train,
`train.step.model_flops` (the step lowered with layers unrolled, XLA attention and no remat: a remat
step executes more, a scanned body counts once, a cuDNN kernel not at all); for prefill, the same
count of the forward (`bench.flops.program_model_flops`). `achieved_tflops` = flops /
`seconds_per_step`, by the devices the program runs on (one); `mfu` divides that by their peak from
`stts_jax.accelerators` (None where none is listed, as on a CPU: "n/a" in the table).

All configs share one set of weights; the packing efficiency is measured on the batch (real
patches / packed ViT slots); peak memory is `report.peak_memory_bytes` of the timed executable.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np

from stts_jax.accelerators import peak_memory_bytes
from stts_jax.bench import report, workload
from stts_jax.bench.flops import program_model_flops
from stts_jax.models import get_config
from stts_jax.models.config import ATTENTION_IMPLS, Molmo2Config
from stts_jax.models.llm import init_cache
from stts_jax.stts.scorer import Scorer
from stts_jax.train.optimizer import OptimizerConfig, make_optimizer
from stts_jax.train.step import TrainState, model_flops, train_step
from stts_jax.vlm.model import Molmo2, VideoBatch

Array = jax.Array
STTS_RNG = {"stts": jax.random.key(0)}


def prefill_fn(cfg: Molmo2Config) -> Callable:
    """(params, batch) -> (next-token logits [batch, vocab], KV cache): the whole forward."""
    model = Molmo2(cfg)

    def prefill(params, batch: VideoBatch):
        cache = init_cache(cfg, batch.input_ids.shape[0], batch.llm_length(cfg))
        logits, forward = model.apply({"params": params}, batch, cache, rngs=STTS_RNG, method=Molmo2.prefill)
        return logits, forward.cache

    return prefill


def encode_fn(cfg: Molmo2Config) -> Callable:
    """(params, batch) -> (LLM token arrays, video tokens): the vision side of the prefill."""
    model = Molmo2(cfg)

    def encode(params, batch: VideoBatch):
        tokens, video, *_ = model.apply({"params": params}, batch, method=Molmo2.prepare, rngs=STTS_RNG)
        return tokens, video

    return encode


def llm_prefill_fn(cfg: Molmo2Config) -> Callable:
    """(params, tokens, video) -> (next-token logits, KV cache): the LLM side of the prefill."""
    model = Molmo2(cfg)

    def llm_prefill(params, tokens: dict[str, Array], video: Array):
        cache = init_cache(cfg, video.shape[0], tokens.input_ids.shape[1])
        logits, _, cache = model.apply({"params": params}, tokens, video, cache, True, method=Molmo2.llm)
        return logits, cache

    return llm_prefill


def scorer_fn(cfg: Molmo2Config, valid: np.ndarray) -> Callable:
    scorer = Scorer(cfg)
    return lambda params, patches, times: scorer.apply({"params": params}, patches, jnp.asarray(valid), times)


def _block(x) -> None:
    jax.block_until_ready(x)


def train_programs(
    cfgs: dict[str, Molmo2Config], params: dict, batches: dict[str, VideoBatch], targets: Array
) -> dict[str, dict]:
    """Per config: a zero-argument `run` (one train step on its batch, state fed back), model flops, the
    devices it runs on and peak memory.

    The state is `init_state`'s, built on a copy of the config's `params` (the step donates it)."""
    programs = {}
    for name, cfg in cfgs.items():
        batch = batches[name]
        optimizer = make_optimizer(OptimizerConfig(), params[name])
        start = jax.tree.map(jnp.array, params[name])
        state = TrainState(
            jnp.zeros((), jnp.int32), start, optimizer.init(start), jax.random.key_data(jax.random.key(0))
        )
        compiled = train_step.lower(cfg, optimizer, state, batch, targets).compile()
        holder = {"state": state}

        def run(compiled=compiled, holder=holder, batch=batch):
            holder["state"], metrics = compiled(holder["state"], batch, targets)  # the state is donated
            _block((holder["state"], metrics))

        programs[name] = {
            "run": run,
            "flops": model_flops(cfg, optimizer, state, batch, targets),
            "devices": report.executable_devices(compiled),
            "peak_memory_bytes": peak_memory_bytes(compiled),
        }
    return programs


def measured_packing_efficiency(cfg: Molmo2Config, params: dict, batch: VideoBatch) -> float:
    """Real patches / slots of the packed ViT buffer on `batch` (only the blocks up to pruning run)."""
    model = Molmo2(cfg)
    efficiency = jax.jit(
        lambda p, b: model.apply({"params": p}, b, method=Molmo2.prepare, rngs=STTS_RNG)[-1]["stts/packing_efficiency"]
    )
    return float(efficiency(params, batch))


def init_params(cfg: Molmo2Config, batch: VideoBatch) -> dict:
    return jax.jit(Molmo2(cfg).init)({"params": jax.random.key(0), "stts": jax.random.key(1)}, batch)["params"]


def shared_params(cfgs: dict[str, Molmo2Config], batch: VideoBatch) -> dict[str, dict]:
    """One set of weights for every config (those without a scorer leave its params out): the
    programs compared differ in what they compute, not in their weights."""
    widest = next((cfg for cfg in cfgs.values() if cfg.stts.uses_scorer), next(iter(cfgs.values())))
    params = init_params(widest.replace(scan_layers=True), batch)  # same layout as unrolled, compiles faster
    without_scorer = {k: v for k, v in params.items() if k != "scorer"}
    return {name: params if cfg.stts.uses_scorer else without_scorer for name, cfg in cfgs.items()}


def prefill_programs(
    cfgs: dict[str, Molmo2Config], params: dict, batches: dict[str, VideoBatch], split: bool
) -> tuple[dict, dict]:
    """(programs, parts): per config the whole prefill on its batch (as `train_programs`); with `split`, per
    config "vit" and "llm" halves and, for configs with a scorer, "scorer" (each {"run", "flops"})."""
    programs, parts = {}, {}
    for name, cfg in cfgs.items():
        cfg, params_of, batch = cfg.replace(scan_layers=False), params[name], batches[name]
        compiled = jax.jit(prefill_fn(cfg)).lower(params_of, batch).compile()
        programs[name] = {
            "run": lambda compiled=compiled, p=params_of, b=batch: _block(compiled(p, b)),
            "flops": program_model_flops(prefill_fn, cfg, params_of, batch),
            "devices": report.executable_devices(compiled),
            "peak_memory_bytes": peak_memory_bytes(compiled),
        }
        if not split:
            continue
        encode = jax.jit(encode_fn(cfg)).lower(params_of, batch).compile()
        tokens, video = encode(params_of, batch)
        llm = jax.jit(llm_prefill_fn(cfg)).lower(params_of, tokens, video).compile()
        parts[name] = {
            "vit": {"run": lambda c=encode, p=params_of, b=batch: _block(c(p, b)), "flops": report.flops(encode)},
            "llm": {
                "run": lambda c=llm, p=params_of, t=tokens, v=video: _block(c(p, t, v)),
                "flops": report.flops(llm),
            },
        }
        if cfg.stts.uses_scorer:
            patches, valid, times = workload.scorer_inputs(cfg, *batch.frame_video_ids.shape)
            scorer = jax.jit(scorer_fn(cfg, valid))
            features = jax.random.normal(jax.random.key(2), patches.shape, patches.dtype)
            frame_times = jnp.broadcast_to(jnp.arange(times.shape[1], dtype=jnp.int32), times.shape)
            compiled_scorer = scorer.lower(params_of["scorer"], features, frame_times).compile()
            parts[name]["scorer"] = {
                "run": lambda c=compiled_scorer, p=params_of["scorer"], x=features, t=frame_times: _block(c(p, x, t)),
                "flops": report.flops(compiled_scorer),
            }
    return programs, parts


def config_names(ratios: list[float]) -> dict[str, float | None]:
    """Program names -> prune ratio (None = the unpruned model, the baseline every ratio is held against)."""
    return {"unpruned": None} | {f"stts k={k}": k for k in ratios}


def measure(
    variant: str,
    frames: int,
    batch_size: int,
    text_tokens: int,
    ratios: list[float],
    modes: list[str],
    repeats: int,
    warmup: int,
    scan: bool,
    remat: str,
    split: bool,
    **runtime: str,
) -> list[dict]:
    """Rows (see `report.FIELDS`, plus timings per round and, for prefill with `split`, the halves).
    `runtime`: config fields such as dtype, param_dtype, attention_impl."""
    base = get_config(variant, scan_layers=scan, remat_policy=remat, **runtime)
    names = config_names(ratios)
    cfgs = {name: workload.method_config(base, k) for name, k in names.items()}
    batch, targets = workload.synthetic_batch(base, batch_size, frames, text_tokens)
    batches = {name: batch.replace(layout=workload.row_layout(cfg, frames, text_tokens)) for name, cfg in cfgs.items()}
    numerics = f"{base.dtype} compute, {base.param_dtype} params, attention {base.attention_impl}"
    train_program = f"layers {'scanned' if scan else 'unrolled'}, remat {remat}; {numerics}"
    params = shared_params(cfgs, batch)
    efficiency = {
        name: measured_packing_efficiency(cfg, params[name], batches[name])
        for name, cfg in cfgs.items()
        if cfg.stts.prunes
    }
    rows = []
    for mode in modes:
        if mode == "train":
            programs, parts = train_programs(cfgs, params, batches, targets), {}
        else:
            programs, parts = prefill_programs(cfgs, params, batches, split)
        load_before = report.load_average()
        times = report.interleaved_times({n: p["run"] for n, p in programs.items()}, repeats, warmup)
        part_runs = {f"{n}/{part}": p["run"] for n, ps in parts.items() for part, p in ps.items()}
        part_times = report.interleaved_times(part_runs, repeats, warmup) if part_runs else {}
        load_after = report.load_average()
        baseline = programs["unpruned"]
        for name, program in programs.items():
            k, cfg = names[name], cfgs[name]
            seconds = float(np.median(times[name]))
            devices = program["devices"]
            row = {
                "setup": f"{frames} frames x batch {batch_size}, text {text_tokens}",
                "variant": variant,
                "frames": frames,
                "batch": batch_size,
                "prune_ratio": 0.0 if k is None else k,
                "method": cfg.stts.method,
                "mode": mode,
                "llm_tokens": batches[name].llm_length(cfg),
                "flops": program["flops"],
                "seconds_per_step": seconds,
                "seconds": times[name],
                "speedup_vs_unpruned": report.paired_speedup(times["unpruned"], times[name]),
                "flop_ratio_vs_unpruned": program["flops"] / baseline["flops"],
                "packing_efficiency": efficiency.get(name),
                "peak_memory_bytes": program["peak_memory_bytes"],
                "device": report.device_name(),
                "program": train_program if mode == "train" else f"layers unrolled; {numerics}",
                "load_average": [load_before, load_after],
                **report.throughput(program["flops"], seconds, len(devices), devices[0].device_kind),
            }
            for part, p in parts.get(name, {}).items():
                row[f"{part}_seconds"] = float(np.median(part_times[f"{name}/{part}"]))
                row[f"{part}_flops"] = p["flops"]
            rows.append(row)
        del programs, parts  # free this mode's states and executables before the next
    return rows


COLUMNS = [
    ("variant", "<", lambda r: r["variant"]),
    ("frames", ">", lambda r: str(r["frames"])),
    ("batch", ">", lambda r: str(r["batch"])),
    ("mode", "<", lambda r: r["mode"]),
    ("method", "<", lambda r: r["method"]),
    ("k", ">", lambda r: "-" if r["method"] == "none" else f"{r['prune_ratio']}"),
    ("LLM tok", ">", lambda r: str(r["llm_tokens"])),
    ("GFLOPs", ">", report.number("flops", ",.0f", 1e-9)),
    ("FLOP ratio", ">", report.number("flop_ratio_vs_unpruned", ".3f")),
    ("bound", ">", lambda r: f"{1 / r['flop_ratio_vs_unpruned']:.2f}"),
    ("s/step", ">", report.number("seconds_per_step", ".2f")),
    ("TFLOP/s", ">", report.number("achieved_tflops", ".3g")),
    ("MFU", ">", report.percent("mfu")),
    ("speed-up", ">", report.number("speedup_vs_unpruned", ".2f")),
    ("of bound", ">", lambda r: f"{r['speedup_vs_unpruned'] * r['flop_ratio_vs_unpruned']:.2f}"),
    ("packing", ">", report.number("packing_efficiency", ".3f")),
    ("peak GB", ">", report.number("peak_memory_bytes", ".2f", 1e-9)),
    ("ViT s", ">", report.number("vit_seconds", ".2f")),
    ("LLM s", ">", report.number("llm_seconds", ".2f")),
    ("scorer s", ">", report.number("scorer_seconds", ".3f")),
    ("scorer FLOPs", ">", lambda r: "-" if r.get("scorer_flops") is None else f"{r['scorer_flops'] / r['flops']:.1%}"),
]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m stts_jax.bench step", description=__doc__.splitlines()[0])
    parser.add_argument("--variant", default="small")
    parser.add_argument("--frames", type=int, nargs="+", default=[16, 64])
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--text_tokens", type=int, default=256)
    parser.add_argument("--ratios", type=float, nargs="+", default=[0.0, 0.3, 0.5, 0.7])
    parser.add_argument("--modes", nargs="+", choices=["train", "prefill"], default=["train", "prefill"])
    parser.add_argument("--repeats", type=int, default=5, help="timed rounds (medians are taken over them)")
    parser.add_argument("--warmup", type=int, default=1, help="untimed rounds first")
    parser.add_argument(
        "--scan", action=argparse.BooleanOptionalAction, default=True, help="scan the train step's layers"
    )
    parser.add_argument("--remat", default="full", help="remat policy of the timed train step")
    parser.add_argument("--no-split", dest="split", action="store_false", help="skip the ViT / LLM / scorer timings")
    parser.add_argument("--dtype", default="float32", help="compute dtype (bfloat16 on an accelerator)")
    parser.add_argument("--param_dtype", default="float32", help="parameter (and optimizer state) dtype")
    parser.add_argument(
        "--attention",
        default="xla",
        choices=ATTENTION_IMPLS,
        help="xla: explicit masks; jax: cuDNN where it applies; gpu: cuDNN ViT + Pallas GPU LLM (fused, no score "
        "matrices); splash: the TPU kernels",
    )
    parser.add_argument("--json", default=None, help="write the rows here")
    args = parser.parse_args(argv)
    runtime = {"dtype": args.dtype, "param_dtype": args.param_dtype, "attention_impl": args.attention}
    rows = []
    for frames in args.frames:
        rows += measure(
            args.variant,
            frames,
            args.batch,
            args.text_tokens,
            args.ratios,
            args.modes,
            args.repeats,
            args.warmup,
            args.scan,
            args.remat,
            args.split,
            **runtime,
        )
        report.write_json(rows, args.json)  # after each size, so a long run keeps what it measured
    report.print_table(rows, COLUMNS)
    print("\n".join(report.peak_lines(rows)))
    loads = [x for r in rows for x in r["load_average"]]
    print(f"device: {rows[0]['device']}; 1-minute load average during the runs: {min(loads):.2f} .. {max(loads):.2f}")
    return 0
