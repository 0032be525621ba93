"""Reading a compiled TPU program: its Pallas kernels, its FLOPs and its time (XLA's cost model plus the
splash kernels at peak), extrapolated over layer depths because XLA counts a scanned loop body once."""

from __future__ import annotations

import dataclasses
import math
import re
from collections import Counter
from collections.abc import Callable

import jax.numpy as jnp
import numpy as np

from stts_jax.models.attention import frame_blocks, splash_block_pairs
from stts_jax.models.config import Molmo2Config
from stts_jax.stts.packing import FrameLayout
from stts_jax.windows import frame_windows

# Matmuls per computed (query block, key block) pair of the splash kernels: forward S = QK^T, O = PV;
# dq kernel S, dP = dO V^T, dQ = dS K; dkv kernel S, dV = P^T dO, dP, dK = dS^T Q.
_SPLASH_MATMULS = {"fwd": 2, "dq": 3, "dkv": 4}
_MXU_WIDTH = 128
# Custom calls XLA's TPU cost model prices at -1 s each (SparseCore hand-offs of gathers / scatters on
# v5p, and ZeroCrop; seen with libtpu 0.0.42): the sentinel is removed, their work is not priced. A
# total still negative means an op not listed here; the time is then reported as unknown (NaN).
_UNPRICED_CALLS = ("PrepareAsyncCallStart", "PrepareAsyncCallDone", "ZeroCrop")


@dataclasses.dataclass(frozen=True)
class MosaicCall:
    """One Pallas TPU kernel call in a compiled program."""

    kernel: str  # e.g. "splash_mha_fwd_segmented_residuals"
    site: str  # "vit", "llm" or "other": the model block it was traced in
    shape: tuple[int, ...]  # its query operand, [..., heads, length, head_dim] on one chip

    def __str__(self) -> str:
        return f"{self.kernel} {self.site} [{','.join(map(str, self.shape))}]"


def mosaic_calls(hlo_text: str) -> Counter:
    """The Mosaic custom calls of a compiled program's HLO text -> Counter of `MosaicCall`."""
    found: Counter = Counter()
    for match in re.finditer(r'custom_call_target="tpu_custom_call"', hlo_text):
        start = hlo_text.rfind("\n", 0, match.start()) + 1
        instruction = hlo_text[start : hlo_text.find("\n  %", match.end())]  # it spans several lines
        name = re.match(r"\s*(?:ROOT )?%?([A-Za-z_]+)", instruction).group(1)
        operands = instruction.split("operand_layout_constraints=", 1)[-1].split("frontend_attributes", 1)[0]
        shapes = [tuple(map(int, s.split(","))) for s in re.findall(r"(?:bf16|f32|f16)\[([\d,]+)\]", operands)]
        op_name = re.search(r'op_name="([^"]*)"', instruction)
        site = "other"
        if op_name and "DecoderBlock" in op_name.group(1):
            site = "llm"
        elif op_name and "ViTBlock" in op_name.group(1):
            site = "vit"
        found[MosaicCall(name, site, next((s for s in shapes if len(s) >= 3), ()))] += 1
    return found


@dataclasses.dataclass(frozen=True)
class Cost:
    """What one chip computes in a program, and how long it takes."""

    xla_flops: float  # ops XLA prices (everything but Mosaic kernels)
    xla_seconds: float  # XLA's TPU cost model for those ops
    kernel_flops: float  # splash kernels, counted from their computed blocks
    kernel_seconds: float  # those FLOPs at peak bf16 FLOP/s, head_dim padded to the MXU width

    @property
    def flops(self) -> float:
        return self.xla_flops + self.kernel_flops

    @property
    def seconds(self) -> float:
        return self.xla_seconds + self.kernel_seconds

    def __add__(self, other: Cost) -> Cost:
        return Cost(*(a + b for a, b in zip(dataclasses.astuple(self), dataclasses.astuple(other), strict=True)))

    def __sub__(self, other: Cost) -> Cost:
        return self + other * -1

    def __mul__(self, factor: float) -> Cost:
        return Cost(*(a * factor for a in dataclasses.astuple(self)))


def packed_vit_block_pairs(length: int, model: Molmo2Config) -> int:
    """(query block, key block) pairs the splash kernel computes over a packed ViT buffer of `length` slots,
    estimated for frames that each keep the mean share 1 - k of their patches, aligned as the packing
    aligns them (the real count follows the scores: `frame_blocks` of the row)."""
    n = model.vision.num_patches
    layout = FrameLayout.of(frame_windows(model), n)
    kept = max(layout.unit, round((1 - model.stts.prune_ratio) * n / layout.unit) * layout.unit)
    stride = -(-kept // layout.granule) * layout.granule
    segments = np.zeros(length, np.int32)
    for frame, start in enumerate(range(0, length - kept + 1, stride)):
        segments[start : start + kept] = frame + 1
    return int((np.asarray(frame_blocks(jnp.asarray(segments), n)[1]) > 0).sum())


def program_cost(compiled, model: Molmo2Config, peak_flops: float) -> Cost:
    """XLA's cost analysis of `compiled`, plus the splash kernels it cannot see."""
    text = compiled.as_text()
    analysis = compiled.cost_analysis() or {}
    flops = float(analysis.get("flops", 0.0))
    unpriced = sum(text.count(f'custom_call_target="{target}"') for target in _UNPRICED_CALLS)
    seconds = float(analysis.get("optimal_seconds", flops / peak_flops)) + unpriced
    if seconds < 0:
        seconds = float("nan")
    kernel_flops = kernel_seconds = 0.0
    for call, count in mosaic_calls(text).items():
        kind = next((k for k in _SPLASH_MATMULS if f"_{k}_" in call.kernel), None)
        if kind is None or len(call.shape) < 3:
            continue
        *lead, length, head_dim = call.shape
        frame = model.vision.num_patches
        if call.site == "llm":
            pairs = splash_block_pairs(length, "causal")
        elif model.stts.prunes and length > -(-frame // 128) * 128:  # a packed buffer, not one frame
            pairs = packed_vit_block_pairs(length, model)
        else:
            pairs = splash_block_pairs(length, "full", frame)
        call_flops = count * math.prod(lead) * pairs * _MXU_WIDTH**2 * head_dim * 2 * _SPLASH_MATMULS[kind]
        kernel_flops += call_flops
        kernel_seconds += call_flops * math.ceil(head_dim / _MXU_WIDTH) * _MXU_WIDTH / head_dim / peak_flops
    return Cost(flops, seconds, kernel_flops, kernel_seconds)


def with_depths(model: Molmo2Config, vit: int, llm: int) -> Molmo2Config:
    """`model` unrolled with `vit` ViT blocks (features from its last two) and `llm` decoder layers."""
    return model.replace(
        scan_layers=False,
        vision=dataclasses.replace(model.vision, num_hidden_layers=vit),
        adapter=dataclasses.replace(model.adapter, vision_feature_layers=(vit - 1, vit - 2)),
        text=dataclasses.replace(model.text, num_hidden_layers=llm, rope_scaling_layers=None),
    ).validate()


def extrapolated_cost(build: Callable[[Molmo2Config], object], model: Molmo2Config, peak_flops: float) -> Cost:
    """The cost of `build(model)` with every layer counted, from three small unrolled compiles.

    Cost is affine in the number of ViT blocks after the STTS cut and in the number of decoder layers
    (each block of a stack sees the same shapes), so c(V, L) = c(v0, 1) + (V - v0) dV + (L - 1) dL.
    v0 keeps the blocks up to the cut (and both feature layers after it) as in the real model."""
    v0 = model.stts.layer + 4 if model.stts.prunes else 4
    cost = lambda vit, llm: program_cost(build(with_depths(model, vit, llm)), model, peak_flops)
    base = cost(v0, 1)
    per_vit, per_llm = cost(v0 + 1, 1) - base, cost(v0, 2) - base
    return base + per_vit * (model.vit_depth - v0) + per_llm * (model.text.num_hidden_layers - 1)
