"""The AOT report of one program (memory against HBM, FLOPs, time, MFU), its table and what makes a run fail."""

from __future__ import annotations

import dataclasses
import math

from stts_jax.accelerators import describe_peak, mfu
from stts_jax.aot.topology import GIB

# The paper's measured speed-ups at k = 0.5 on 8 H100 (STTS.md section 8): frames -> (train, inference).
PAPER_SPEEDUP = {64: (1.62, 1.61), 256: (2.25, 2.22)}


@dataclasses.dataclass
class Report:
    """One compiled program on one chip of the slice (bytes, FLOPs, seconds are per chip; `model_flops` is
    the whole step's)."""

    program: str  # "train" | "prefill"
    method: str
    prune_ratio: float
    llm_tokens: int  # LLM sequence per row (after pruning)
    hbm_bytes: float
    argument_bytes: int = 0
    output_bytes: int = 0
    alias_bytes: int = 0
    temp_bytes: int = 0
    peak_bytes: int = 0  # XLA's buffer-assignment peak; `resident_bytes` is the conservative sum
    flops: float = float("nan")
    kernel_flops: float = float("nan")  # the splash kernels' share of `flops`
    xla_seconds: float = float("nan")
    kernel_seconds: float = float("nan")
    cost_source: str = ""  # "extrapolate" (every layer counted) or "scan" (each layer stack once)
    kernels: dict = dataclasses.field(default_factory=dict)  # str(MosaicCall) -> calls in the program
    compile_seconds: float = 0.0
    error: str = ""  # why it did not compile (e.g. the compiler's out-of-memory message)
    memory_measured: bool = True  # False: only the cost compiles ran (--nobaseline_memory for k = 0)
    # The step's work as the model defines it, over all chips: no remat recomputation, dense XLA attention
    # (`programs.model_flops`); `flops` is what one chip's compiled program executes, recomputation included.
    model_flops: float = float("nan")
    chips: int = 1
    device_kind: str = ""  # its peak FLOP/s: stts_jax.accelerators

    @property
    def mfu(self) -> float:
        """Model FLOPs over the chips' peak in the estimated step time; NaN where that time counts each
        layer stack once (--cost=scan)."""
        if self.cost_source != "extrapolate":
            return float("nan")
        return mfu(self.model_flops, self.step_seconds, self.chips, self.device_kind)

    @property
    def resident_bytes(self) -> int:
        return self.argument_bytes + self.output_bytes - self.alias_bytes + self.temp_bytes

    @property
    def used_bytes(self) -> int:
        return max(self.peak_bytes, self.resident_bytes)

    @property
    def fits(self) -> bool:
        return not self.error and self.memory_measured and self.used_bytes <= self.hbm_bytes

    @property
    def step_seconds(self) -> float:
        return self.xla_seconds + self.kernel_seconds


def _gib(x: float) -> str:
    return f"{x / GIB:.2f}"


def format_reports(setup: dict, reports: list[Report]) -> str:
    """The table printed by the CLI."""
    mesh = " ".join(f"{k}={v}" for k, v in setup["mesh"].items())
    lines = [
        f"slice {setup['topology']} x {setup['num_slices']}: {setup['chips']} chips of {setup['device_kind']} "
        f"({setup['hbm_gib_per_chip']:.0f} GiB HBM, {setup['peak_bf16_tflops']:.0f} bf16 TFLOP/s each), "
        f"{setup['hosts']} hosts; mesh {mesh}",
        f"peak for MFU: {describe_peak(setup['device_kind'])}",
        f"step: {setup['rows']} rows x {setup['frames_per_row']} frame slots (up to {setup['videos_per_row']} videos), "
        f"{setup['input_tokens']} input tokens "
        f"per row -> {setup['llm_tokens']} LLM tokens; accumulate {setup['accumulate_steps']}, remat "
        f"{setup['remat_policy']}, {setup['dtype']} compute; splash attention",
        "",
        f"{'program':<8} {'method':<6} {'k':>4} {'LLM tok':>7} {'args':>6} {'out':>6} {'temp':>6} {'peak':>6} "
        f"{'HBM':>5} {'margin':>7} {'TFLOP':>8} {'kernel':>6} {'model':>8} {'XLA s':>7} {'attn s':>7} "
        f"{'step s':>7} {'MFU':>6} {'compile':>7}  fits",
    ]
    for r in reports:
        head = f"{r.program:<8} {r.method:<6} {r.prune_ratio:>4} {r.llm_tokens:>7}"
        if r.error:
            lines.append(f"{head}  did not compile: {r.error}")
            continue
        if r.memory_measured:
            memory = (
                f"{_gib(r.argument_bytes):>6} {_gib(r.output_bytes):>6} {_gib(r.temp_bytes):>6} "
                f"{_gib(r.used_bytes):>6} {_gib(r.hbm_bytes):>5} {1 - r.used_bytes / r.hbm_bytes:>7.1%}"
            )
        else:
            memory = f"{'-':>6} {'-':>6} {'-':>6} {'-':>6} {_gib(r.hbm_bytes):>5} {'-':>7}"
        verdict = "(cost only)" if not r.memory_measured else "yes" if r.fits else "NO"
        utilisation = "-" if math.isnan(r.mfu) else f"{r.mfu:.1%}"
        lines.append(
            f"{head} {memory} {r.flops / 1e12:>8.1f} {r.kernel_flops / r.flops:>6.1%} "
            f"{r.model_flops / r.chips / 1e12:>8.1f} {r.xla_seconds:>7.3f} {r.kernel_seconds:>7.3f} "
            f"{r.step_seconds:>7.3f} {utilisation:>6} {r.compile_seconds:>6.0f}s  {verdict}"
        )
    lines.append(
        "per chip: memory in GiB (peak = max(XLA peak, args + out - aliased + temp)); TFLOP the compiled step "
        "executes (remat recomputation included), 'kernel' the splash kernels' share; model = the step's model "
        "TFLOP / chips (no recomputation, dense attention); step s = XLA s (TPU cost model, all other ops) + "
        "attn s (kernels at peak bf16); MFU = model TFLOP / (peak x step s)"
    )
    if any(math.isnan(r.xla_seconds) for r in reports if not r.error):
        lines.append("XLA's cost model priced an unknown op at -1 s: that program's time is unknown (nan).")
    if any(r.cost_source == "scan" for r in reports):
        lines.append(
            "--cost=scan: FLOPs and times count each scanned layer stack ONCE, not the step's totals (model "
            "TFLOP do count every layer): no MFU."
        )
    for program, paper_index in (("train", 0), ("prefill", 1)):
        pair = [r for r in reports if r.program == program and not r.error]
        pruned = [r for r in pair if r.prune_ratio > 0]
        full = [r for r in pair if r.prune_ratio == 0]
        if pruned and full:
            speedup = full[0].step_seconds / pruned[0].step_seconds
            frames = setup["frames_per_row"] // setup["videos_per_row"]
            paper = PAPER_SPEEDUP.get(frames)
            note = f" (paper, {frames} frames on 8xH100: {paper[paper_index]:.2f}x)" if paper else ""
            lines.append(
                f"predicted TPU speed-up, {program}: k=0 {full[0].step_seconds:.3f} s / "
                f"k={pruned[0].prune_ratio} {pruned[0].step_seconds:.3f} s = {speedup:.2f}x{note}"
            )
    kernels = next((r.kernels for r in reports if not r.error and r.kernels), {})
    if kernels:
        lines.append(
            f"Pallas kernels in the compiled {reports[0].program} step (Mosaic custom calls; site; query "
            "operand [..., heads, length, head_dim] per chip; a scanned stack appears once):"
        )
        lines += [f"  {count:>4} x {name}" for name, count in kernels.items()]
    return "\n".join(lines)


def failures(reports: list[Report]) -> list[str]:
    """Why the configured programs (not the k = 0 comparison) cannot run on the slice."""
    own = [r for r in reports if r.method == reports[0].method]
    problems = []
    for r in own:
        if r.error:
            problems.append(f"{r.program} step did not compile: {r.error}")
        elif not r.memory_measured:  # --nomemory: priced only, neither memory nor kernels were looked at
            continue
        elif not r.fits:
            problems.append(
                f"{r.program} step needs {_gib(r.used_bytes)} GiB per chip, more than the {_gib(r.hbm_bytes)} GiB "
                "of HBM: use more chips (a larger --topology), shard more (train.mesh.fsdp / tensor), "
                "micro-batch (train.accumulate_steps), or remat (model.remat_policy=full)."
            )
        elif not any(name.startswith("splash_mha") for name in r.kernels):
            problems.append(f"{r.program} step has no Pallas splash kernel: attention did not take the TPU path.")
    return problems
