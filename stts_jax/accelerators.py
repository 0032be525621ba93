"""What each accelerator can do at best, by JAX's `device_kind`: HBM and peak dense bf16 FLOP/s, each with
its source. MFU (model FLOPs utilisation) in training logs, benchmarks and the AOT report divides by
these peaks; a device not listed (a CPU) has no MFU."""

from __future__ import annotations

import dataclasses

import jax


@dataclasses.dataclass(frozen=True)
class Accelerator:
    hbm_gib: float  # as the runtime reports its limit
    peak_bf16_tflops: float  # dense (no 2:4 sparsity), per chip
    source: str


_TPU_DOCS = "cloud.google.com/tpu/docs/"
_NVIDIA = "NVIDIA datasheet, dense bf16 tensor core (half the 'with sparsity' figure)"

ACCELERATORS: dict[str, Accelerator] = {
    "TPU v4": Accelerator(32.0, 275.0, _TPU_DOCS + "v4"),
    "TPU v5 lite": Accelerator(16.0, 197.0, _TPU_DOCS + "v5e"),
    "TPU v5": Accelerator(95.0, 459.0, _TPU_DOCS + "v5p"),
    "TPU v6 lite": Accelerator(32.0, 918.0, _TPU_DOCS + "v6e"),
    "NVIDIA A100-SXM4-40GB": Accelerator(40.0, 312.0, _NVIDIA + ", A100 SXM"),
    "NVIDIA A100-SXM4-80GB": Accelerator(80.0, 312.0, _NVIDIA + ", A100 SXM"),
    "NVIDIA H100 80GB HBM3": Accelerator(80.0, 989.4, _NVIDIA + ", H100 SXM"),
    "NVIDIA H100 PCIe": Accelerator(80.0, 756.5, _NVIDIA + ", H100 PCIe"),
    "NVIDIA H200": Accelerator(141.0, 989.4, _NVIDIA + ", H200 SXM"),
}


def accelerator(device_kind: str) -> Accelerator | None:
    """The listed accelerator of a `device_kind`, or None (a CPU, or a chip to add to ACCELERATORS)."""
    return ACCELERATORS.get(device_kind)


def mfu(flops: float, seconds: float, devices: int, device_kind: str) -> float:
    """Model FLOPs per second over the devices' peak: NaN where the peak is not known."""
    found = accelerator(device_kind)
    if found is None or seconds <= 0:
        return float("nan")
    return flops / seconds / (devices * found.peak_bf16_tflops * 1e12)


def describe_peak(device_kind: str) -> str:
    """The peak an MFU of `device_kind` is held against and its source, or why there is none: a report's line."""
    found = accelerator(device_kind)
    if found is None:
        return (
            f"no peak FLOP/s listed for device kind {device_kind!r}, so no MFU "
            "(a chip's dense bf16 peak goes in stts_jax.accelerators.ACCELERATORS)"
        )
    return f"{device_kind}: {found.peak_bf16_tflops:g} dense bf16 TFLOP/s per device ({found.source})"


def peak_memory_bytes(compiled: jax.stages.Compiled) -> int | None:
    """Arguments + outputs + XLA temporaries - donated (aliased) bytes: the buffers live at the
    executable's peak, as XLA's buffer assignment plans them (`memory_analysis()`), per device; None where
    the backend gives no analysis."""
    m = compiled.memory_analysis()
    if m is None:
        return None
    return m.argument_size_in_bytes + m.output_size_in_bytes + m.temp_size_in_bytes - m.alias_size_in_bytes


def memory_summary(compiled: jax.stages.Compiled) -> str:
    """What the compiler plans to hold on each device, in GiB: "arguments 1.2, temporaries 3.4, peak 4.5"."""
    m, peak = compiled.memory_analysis(), peak_memory_bytes(compiled)
    if m is None:
        return "memory not reported by this backend"
    gib = lambda n: f"{n / 1024**3:.3g} GiB"
    return f"arguments {gib(m.argument_size_in_bytes)}, temporaries {gib(m.temp_size_in_bytes)}, peak {gib(peak)}"
