"""The benchmark rows: their fields, timing side by side, the machine they ran on, tables and JSON.

Every sub-command of `python -m stts_jax.bench` returns rows (dicts) that carry at least `FIELDS`;
a field that does not apply to a row (the unpruned model's packing efficiency, a FLOP count the
row did not compile) is None.
"""

from __future__ import annotations

import json
import math
import os
import platform
import statistics
import time
from collections.abc import Callable, Mapping, Sequence

import jax

from stts_jax.accelerators import accelerator, describe_peak, mfu

FIELDS = (
    "setup",
    "variant",
    "frames",
    "batch",
    "prune_ratio",
    "method",
    "mode",
    "flops",
    "seconds_per_step",
    "speedup_vs_unpruned",
    "flop_ratio_vs_unpruned",
    "packing_efficiency",
    "peak_memory_bytes",
    "device",
)


def device_name() -> str:
    """The accelerator, or the CPU model and core count when JAX runs on the host."""
    d = jax.devices()[0]
    if d.platform != "cpu":
        return f"{d.device_kind} x{jax.device_count()}"
    model = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            model = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return f"{model}, {os.cpu_count()} cores (JAX CPU)"


def flops(compiled: jax.stages.Compiled) -> float:
    """XLA's cost-analysis FLOPs (a loop body counts once: compile the layers unrolled to count)."""
    return float(compiled.cost_analysis()["flops"])


def executable_devices(compiled: jax.stages.Compiled) -> list:
    """The devices `compiled` runs on (its first argument's sharding says)."""
    return sorted(jax.tree.leaves(compiled.input_shardings)[0].device_set, key=lambda d: d.id)


def throughput(flops: float, seconds: float, devices: int, device_kind: str) -> dict:
    """A timed row's fields: model TFLOP/s achieved by its `devices` together and MFU, the FLOP/s over the
    devices' peak (`stts_jax.accelerators`); the peak and MFU are None where `device_kind` has no peak
    listed (a CPU)."""
    found = accelerator(device_kind)
    utilisation = mfu(flops, seconds, devices, device_kind)
    return {
        "devices": devices,
        "device_kind": device_kind,
        "achieved_tflops": flops / seconds / 1e12,
        "mfu": None if math.isnan(utilisation) else utilisation,
        "peak_tflops_per_device": found.peak_bf16_tflops if found else None,
        "peak_source": found.source if found else None,
    }


def peak_lines(rows: Sequence[dict]) -> list[str]:
    """What the MFU of `rows` (with `throughput`'s fields) is held against, one line per device kind."""
    kinds = dict.fromkeys(r["device_kind"] for r in rows)
    return [f"peak for MFU (model FLOPs / s / (devices x peak)): {describe_peak(kind)}" for kind in kinds]


def interleaved_times(runs: Mapping[str, Callable[[], None]], repeats: int, warmup: int) -> dict[str, list[float]]:
    """Seconds of each of `runs` (each call blocks until its results are ready), `repeats` rounds.

    Every round runs every program once, in alternating order, so that a change in the machine's
    load hits all programs alike; `warmup` untimed rounds come first."""
    for _ in range(warmup):
        for run in runs.values():
            run()
    times: dict[str, list[float]] = {name: [] for name in runs}
    for round_index in range(repeats):
        for name in list(runs)[:: 1 if round_index % 2 == 0 else -1]:
            start = time.perf_counter()
            runs[name]()
            times[name].append(time.perf_counter() - start)
    return times


def paired_speedup(baseline: Sequence[float], candidate: Sequence[float]) -> float:
    """Median over rounds of baseline / candidate seconds measured in the same round."""
    return statistics.median(b / c for b, c in zip(baseline, candidate, strict=True))


def load_average() -> float:
    """The machine's 1-minute load average (other processes compete for the cores)."""
    return os.getloadavg()[0]


def write_json(rows: list[dict], path: str | None) -> None:
    if path:
        with open(path, "w") as f:
            json.dump(rows, f, indent=2)


def print_table(rows: list[dict], columns: Sequence[tuple[str, str, Callable[[dict], str]]]) -> None:
    """One line per row; columns are (header, alignment '<' or '>', formatter of the row)."""
    cells = [[fmt(r) for _, _, fmt in columns] for r in rows]
    widths = [max([len(h)] + [len(c[i]) for c in cells]) for i, (h, _, _) in enumerate(columns)]
    line = lambda values: "  ".join(f"{v:{a}{w}}" for v, (_, a, _), w in zip(values, columns, widths, strict=True))
    print(line([h for h, _, _ in columns]))
    for c in cells:
        print(line(c))


def percent(key: str) -> Callable[[dict], str]:
    """Formatter of a fraction; 'n/a' where the row has none (an MFU without a known peak)."""
    return lambda r: "n/a" if r.get(key) is None else f"{r[key]:.1%}"


def number(key: str, spec: str, scale: float = 1.0) -> Callable[[dict], str]:
    """Formatter of a numeric field; '-' where the row has none."""
    return lambda r: "-" if r.get(key) is None else f"{r[key] * scale:{spec}}"
