"""Ahead-of-time compilation for a TPU slice from any host, no TPU needed: does the run fit, how fast is it.

  python -m stts_jax.aot --config=configs/molmo2_4b_v5p.py --topology=v5p:2x2x2
  python -m stts_jax.aot --config=configs/molmo2_4b_v6e.py --topology=v6e:4x8 --json=/tmp/aot.json
  python -m stts_jax.aot --config=configs/synthetic.py:variant=tiny --topology=v5e:2x2 --config.train.mesh.fsdp=4

libtpu (the `jax[tpu]` extra) describes the slice (`jax.experimental.topologies`); the config's mesh
is laid over its chips, and the real train step (`sharded_train_step`) and a prefill step (the
forward over the whole prompt into a KV cache, and the next-token logits) are lowered on abstract
sharded inputs and compiled by the TPU compiler, attention on the Pallas splash kernels. Printed
per chip: argument / output / temporary / peak memory against the chip's HBM, FLOPs and the
estimated step time; then the same for k = 0 (`stts.method=none` on the same batches) and the
predicted speed-up. Exit status 1, with the reason, if a configured program does not fit in HBM or
cannot be sharded as configured.

How the figures are made (XLA's cost analysis has two blind spots, both handled here):
- Memory is that of the program as configured (layers under `lax.scan`), exact.
- XLA counts a loop body once, so FLOPs and time come from the same program compiled with the
  layers unrolled at two reduced depths per stack, extrapolated linearly to the real depths (every
  block of a stack costs the same): `--cost=extrapolate`, the default. `--cost=scan` reads the
  configured program instead and says that its figures count each stack once.
- XLA cannot see inside a Mosaic kernel. Step time = XLA's TPU cost model (`optimal_seconds`) for
  every other op + the splash kernels' FLOPs at the chip's peak bf16 rate (head_dim padded to the
  128-wide MXU), counted from the blocks each kernel's static mask lets it compute.
"""

from __future__ import annotations

import dataclasses
import gc
import json
import logging
import math
import os
import re
import sys
import time
from collections import Counter
from collections.abc import Callable

import jax
import jax.numpy as jnp
import ml_collections
from jax.experimental import mesh_utils, topologies
from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec

from stts_jax.bench.flops import abstract_batch
from stts_jax.data.pipeline import input_seq_len
from stts_jax.errors import ConfigError
from stts_jax.models.attention import splash_block_pairs
from stts_jax.models.config import Molmo2Config
from stts_jax.models.llm import init_cache
from stts_jax.train.experiment import model_config, pipeline_config
from stts_jax.train.optimizer import OptimizerConfig, make_optimizer
from stts_jax.train.sharding import MESH_AXES, MeshConfig, batch_sharding, make_mesh, param_shardings, state_shardings
from stts_jax.train.step import init_state, param_shapes, sharded_train_step
from stts_jax.vlm.model import Molmo2, VideoBatch, last_token

log = logging.getLogger(__name__)

GIB = 1024**3

# HBM per chip (GiB, as the TPU runtime reports its limit) and peak dense bf16 TFLOP/s, by `device_kind`.
CHIPS: dict[str, tuple[float, float]] = {
    "TPU v4": (32.0, 275.0),
    "TPU v5 lite": (16.0, 197.0),  # v5e
    "TPU v5": (95.0, 459.0),  # v5p
    "TPU v6 lite": (32.0, 918.0),  # v6e (Trillium)
}

# The paper's measured speed-ups at k = 0.5 on 8 H100 (STTS.md section 8): frames -> (train, inference).
PAPER_SPEEDUP = {64: (1.62, 1.61), 256: (2.25, 2.22)}

# Matmuls per computed (query block, key block) pair of the splash kernels: forward S = QK^T, O = PV;
# dq kernel S, dP = dO V^T, dQ = dS K; dkv kernel S, dV = P^T dO, dP, dK = dS^T Q.
_SPLASH_MATMULS = {"fwd": 2, "dq": 3, "dkv": 4}
_MXU_WIDTH = 128
# Custom calls XLA's TPU cost model prices at -1 s each (SparseCore hand-offs of gathers / scatters on
# v5p, and ZeroCrop; seen with libtpu 0.0.42): the sentinel is removed, their work is not priced. A
# total still negative means an op not listed here; the time is then reported as unknown (NaN).
_UNPRICED_CALLS = ("PrepareAsyncCallStart", "PrepareAsyncCallDone", "ZeroCrop")

_TOPOLOGY = re.compile(r"^(v\d+[a-z]*):(\d+(?:x\d+){1,2})$")


class AOTError(RuntimeError):
    """The program cannot run as configured on the slice; the message says why and what to change."""


# -- The slice -------------------------------------------------------------------------------------------


def topology_devices(topology: str, num_slices: int = 1) -> list:
    """The devices of `num_slices` TPU slices of `topology` ("v5p:2x2x2", "v6e:4x4"), described by libtpu."""
    if not _TOPOLOGY.match(topology):
        raise AOTError(
            f"--topology={topology!r} is not a TPU slice; write <generation>:<chips per dimension>, e.g. "
            "v5p:2x2x2, v5e:4x4, v6e:8x8 (v4 and v5p are 3-D, v5e and v6e 2-D)."
        )
    if num_slices < 1:
        raise AOTError(f"--num_slices={num_slices} must be >= 1.")
    # libtpu takes a machine-wide lock meant for real chips; describing a slice needs none of them,
    # and another JAX process (a test run) may already hold it.
    os.environ.setdefault("ALLOW_MULTIPLE_LIBTPU_LOAD", "1")
    try:
        return list(topologies.get_topology_desc(topology, "tpu", num_slices=num_slices).devices)
    except ImportError as e:
        raise AOTError(f"libtpu is not installed ({e}); pip install 'jax[tpu]' (or the [test] extra).") from e
    except jax.errors.JaxRuntimeError as e:
        raise AOTError(
            f"libtpu rejected --topology={topology!r}: {str(e).splitlines()[0]}. Use a slice shape the "
            "generation offers: a multiple of one host's chips (2x2x1 on v4/v5p, 2x2 on v5e/v6e), e.g. "
            "v5p:2x2x2, v5p:4x4x4, v5e:4x4, v6e:8x8."
        ) from e


def chip_spec(device) -> tuple[float, float]:
    """(HBM bytes, peak bf16 FLOP/s) of one chip."""
    if device.device_kind not in CHIPS:
        raise AOTError(f"unknown TPU chip {device.device_kind!r}; add its HBM and peak FLOP/s to stts_jax.aot.CHIPS.")
    hbm_gib, tflops = CHIPS[device.device_kind]
    return hbm_gib * GIB, tflops * 1e12


def slice_mesh(mesh_cfg: MeshConfig, devices: list, num_slices: int) -> Mesh:
    """The config's ('data', 'fsdp', 'tensor') mesh over the slice; across slices only 'data' (DCN)."""
    if num_slices == 1:
        return make_mesh(mesh_cfg, devices)
    if mesh_cfg.data % num_slices or math.prod(mesh_cfg.shape) != len(devices):
        raise AOTError(
            f"mesh data x fsdp x tensor = {mesh_cfg.shape} over {num_slices} slices of {len(devices) // num_slices} "
            f"chips: 'data' must be a multiple of {num_slices} (data-parallel across slices) and the product "
            f"must be {len(devices)}; set --config.train.mesh.data/fsdp/tensor accordingly."
        )
    ici = (mesh_cfg.data // num_slices, mesh_cfg.fsdp, mesh_cfg.tensor)
    grid = mesh_utils.create_hybrid_device_mesh(ici, (num_slices, 1, 1), devices)
    return Mesh(grid, MESH_AXES, axis_types=(AxisType.Auto,) * 3)


# -- Reading a compiled program --------------------------------------------------------------------------


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
        mask = ("causal", 0) if call.site == "llm" else ("full", model.vision.num_patches)
        pairs = splash_block_pairs(length, *mask)
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


# -- Programs --------------------------------------------------------------------------------------------


@dataclasses.dataclass
class Report:
    """One compiled program on one chip of the slice (bytes, FLOPs, seconds are per chip)."""

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


def _abstract(tree, shardings):
    """Shapes -> `ShapeDtypeStruct`s placed on the slice; `shardings` is a tree like `tree`, or one for all."""
    if isinstance(shardings, jax.sharding.Sharding):
        shardings = jax.tree.map(lambda _: shardings, tree)
    return jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), tree, shardings)


def _compile(fn, mesh: Mesh, *args):
    """Lower and compile under the mesh (the splash kernels read it to run per shard)."""
    start = time.perf_counter()
    with jax.sharding.use_abstract_mesh(mesh.abstract_mesh):
        compiled = fn.lower(*args).compile()
    jax.clear_caches()  # a trace of this size, kept for every compile, would exhaust the host's memory
    gc.collect()
    log.info("compiled %s in %.0f s", getattr(fn, "__name__", "program"), time.perf_counter() - start)
    return compiled


def measure(
    report: Report,
    build: Callable[[Molmo2Config], object],
    model: Molmo2Config,
    chip: tuple[float, float],
    cost: str,
    cost_build: Callable[[Molmo2Config], object] | None = None,
    repeat: int = 1,
    memory: bool = True,
) -> Report:
    """Fill `report` from `build(model) -> compiled`: memory and kernels of the program as configured
    (unless `memory` is False); FLOPs and time as `cost` says, from `cost_build` (default `build`) times
    `repeat`."""
    start = time.perf_counter()
    log.info("%s step, %s k=%s: compiling (memory: %s, cost: %s)", *dataclasses.astuple(report)[:3], memory, cost)
    report.memory_measured = memory
    found = None
    try:
        if memory:
            compiled = build(model)
            analysis = compiled.memory_analysis()
            report.argument_bytes = analysis.argument_size_in_bytes
            report.output_bytes = analysis.output_size_in_bytes
            report.alias_bytes = analysis.alias_size_in_bytes
            report.temp_bytes = analysis.temp_size_in_bytes
            report.peak_bytes = getattr(analysis, "peak_memory_in_bytes", 0)
            report.kernels = {str(c): n for c, n in sorted(mosaic_calls(compiled.as_text()).items(), key=str)}
            if cost == "scan" and cost_build is None:
                found = program_cost(compiled, model, chip[1])
            del compiled  # before the next compile: host memory
        if found is None:
            build_cost = cost_build or build
            if cost == "scan":
                found = program_cost(build_cost(model), model, chip[1])
            else:
                found = extrapolated_cost(build_cost, model, chip[1])
        found = found * repeat
        report.flops, report.kernel_flops = found.flops, found.kernel_flops
        report.xla_seconds, report.kernel_seconds = found.xla_seconds, found.kernel_seconds
        report.cost_source = cost
    except (jax.errors.JaxRuntimeError, ValueError) as e:  # out of HBM (the TPU compiler), or unshardable
        report.error = " ".join(str(e).split())[:400]
    report.compile_seconds = time.perf_counter() - start
    log.info("%s", report)
    return report


@dataclasses.dataclass(frozen=True)
class Workload:
    """What one step consumes: the same batches for the STTS model and for k = 0."""

    model: Molmo2Config  # with attention_impl="splash"
    rows: int  # global batch (rows of packed examples)
    frames: int  # frame slots per row
    input_tokens: int  # tokens per row before pruning
    videos_per_row: int
    accumulate: int
    optimizer: OptimizerConfig

    @property
    def llm_tokens(self) -> int:
        return self.model.stts.llm_seq_len if self.model.stts.prunes else self.input_tokens

    @property
    def prune_ratio(self) -> float:
        return self.model.stts.prune_ratio if self.model.stts.prunes else 0.0

    def baseline(self) -> Workload:
        """k = 0 on the same batches: no pruning, the LLM runs on every input token."""
        stts = dataclasses.replace(self.model.stts, method="none", llm_seq_len=None)
        return dataclasses.replace(self, model=self.model.replace(stts=stts))


def workload(config: ml_collections.ConfigDict, hosts: int) -> Workload:
    """The config's model (splash attention) and batch shapes, as the training loop builds them."""
    model = model_config(config).replace(attention_impl="splash")
    pipeline = pipeline_config(config, model)
    if model.stts.prunes:
        model = model.replace(stts=dataclasses.replace(model.stts, llm_seq_len=pipeline.llm_seq_len))
    optimizer = config.train.get("optimizer", {})
    return Workload(
        model=model.validate(),
        rows=pipeline.batch_size * hosts,  # data.batch_size is per host, as in the training loop
        frames=pipeline.max_frames,
        input_tokens=input_seq_len(model, pipeline),
        videos_per_row=pipeline.max_videos_per_row,
        accumulate=config.train.get("accumulate_steps", 1),
        optimizer=OptimizerConfig(
            **{k: tuple(map(tuple, v)) if k == "learning_rates" else v for k, v in optimizer.items()}
        ),
    )


def _batch(w: Workload, cfg: Molmo2Config, rows: int) -> tuple[VideoBatch, jax.ShapeDtypeStruct]:
    batch = abstract_batch(cfg, rows, w.frames, w.input_tokens)
    pixels = batch.pixel_values
    # the loop feeds normalised float32 pixels whatever the compute dtype
    batch = batch.replace(pixel_values=jax.ShapeDtypeStruct(pixels.shape, jnp.float32))
    return batch, jax.ShapeDtypeStruct((rows, w.input_tokens), jnp.int32)


def train_build(w: Workload, mesh: Mesh, rows: int, accumulate: int) -> Callable[[Molmo2Config], object]:
    """cfg -> `sharded_train_step` for cfg on `mesh` over `rows` rows in `accumulate` micro-batches, compiled."""
    try:
        batch_sharding(mesh, rows // accumulate)  # every micro-batch is split over the rows' axes
        sharding = batch_sharding(mesh, rows)
    except ConfigError as e:
        raise AOTError(f"{e} (the global batch is data.batch_size per host; train.accumulate_steps splits it)") from e

    def build(cfg: Molmo2Config):
        batch, targets = _batch(w, cfg, rows)
        optimizer = make_optimizer(w.optimizer, param_shapes(cfg, batch))
        state = jax.eval_shape(lambda b: init_state(cfg, optimizer, b, 0), batch)
        shardings = state_shardings(state, mesh)
        step = sharded_train_step(cfg, optimizer, shardings, sharding, accumulate)
        args = _abstract(state, shardings), _abstract(batch, sharding), _abstract(targets, sharding)
        return _compile(step, mesh, *args)

    return build


def train_report(w: Workload, mesh: Mesh, chip: tuple[float, float], cost: str, memory: bool = True) -> Report:
    """`sharded_train_step` for `w` on `mesh`. Its accumulated micro-batches run in a loop, which XLA
    also counts once: the cost compiles take one micro-batch per step and are scaled by their number
    (so the optimizer update, a few milliseconds, is counted that many times)."""
    if w.rows % w.accumulate:
        raise AOTError(f"global batch {w.rows} is not divisible by train.accumulate_steps {w.accumulate}.")
    build = train_build(w, mesh, w.rows, w.accumulate)
    report = Report("train", w.model.stts.method, w.prune_ratio, w.llm_tokens, chip[0])
    if w.accumulate == 1:
        return measure(report, build, w.model, chip, cost, memory=memory)
    micro_batch = train_build(w, mesh, w.rows // w.accumulate, 1)
    return measure(report, build, w.model, chip, cost, cost_build=micro_batch, repeat=w.accumulate, memory=memory)


def prefill_report(w: Workload, mesh: Mesh, chip: tuple[float, float], cost: str, memory: bool = True) -> Report:
    """The forward over the whole prompt into a KV cache, and the logits of each row's last token."""
    rows = NamedSharding(mesh, PartitionSpec(("data", "fsdp")))

    def build(cfg: Molmo2Config):
        model = Molmo2(cfg)
        batch, _ = _batch(w, cfg, w.rows)
        params = param_shapes(cfg, batch)

        def prefill(params, batch):
            cache = init_cache(cfg, w.rows, w.llm_tokens)
            _, forward = model.apply({"params": params}, batch, cache, rngs={"stts": jax.random.key(0)})
            last = last_token(forward.tokens.segment_ids)
            hidden = jnp.take_along_axis(forward.hidden, last[:, None, None], axis=1)
            # the full-sequence logits are unused, so XLA drops them: only the last token's are computed
            logits = model.apply({"params": params}, hidden, method=lambda m, h: m.lm_head(h))
            return logits[:, 0], forward.cache

        shardings = param_shardings(params, mesh)
        fn = jax.jit(prefill, in_shardings=(shardings, rows))
        return _compile(fn, mesh, _abstract(params, shardings), _abstract(batch, rows))

    report = Report("prefill", w.model.stts.method, w.prune_ratio, w.llm_tokens, chip[0])
    return measure(report, build, w.model, chip, cost, memory=memory)


PROGRAMS = {"train": train_report, "prefill": prefill_report}


def run(
    config: ml_collections.ConfigDict,
    topology: str,
    num_slices: int = 1,
    cost: str = "extrapolate",
    baseline: bool = True,
    programs: tuple[str, ...] = ("train", "prefill"),
    baseline_memory: bool = True,
    memory: bool = True,
) -> tuple[dict, list[Report]]:
    """Compiles the config's programs (and k = 0's) for the slice -> (setup, reports); with `memory`
    (`baseline_memory`) False, the configured program (k = 0) gets its cost only, which saves the
    full compile of the program as configured."""
    unknown = sorted(set(programs) - set(PROGRAMS))
    if unknown:
        raise AOTError(f"--programs {unknown}: choose from {sorted(PROGRAMS)}.")
    devices = topology_devices(topology, num_slices)
    chip = chip_spec(devices[0])
    hosts = len({d.process_index for d in devices})
    try:
        mesh = slice_mesh(MeshConfig(**config.train.mesh), devices, num_slices)
        w = workload(config, hosts)
    except ConfigError as e:
        raise AOTError(f"{e} (config.train.mesh / config.data; --config.train.mesh.fsdp=N etc. override it)") from e
    setup = {
        "topology": topology,
        "num_slices": num_slices,
        "chips": len(devices),
        "hosts": hosts,
        "device_kind": devices[0].device_kind,
        "hbm_gib_per_chip": chip[0] / GIB,
        "peak_bf16_tflops": chip[1] / 1e12,
        "mesh": dict(mesh.shape),
        "rows": w.rows,
        "frames_per_row": w.frames,
        "videos_per_row": w.videos_per_row,
        "input_tokens": w.input_tokens,
        "llm_tokens": w.llm_tokens,
        "accumulate_steps": w.accumulate,
        "remat_policy": w.model.remat_policy,
        "dtype": w.model.dtype,
    }
    workloads = [w] + ([w.baseline()] if baseline and w.model.stts.prunes else [])
    return setup, [
        PROGRAMS[p](x, mesh, chip, cost, memory=memory if x is w else baseline_memory)
        for p in programs
        for x in workloads
    ]


# -- Output ----------------------------------------------------------------------------------------------


def _gib(x: float) -> str:
    return f"{x / GIB:.2f}"


def format_reports(setup: dict, reports: list[Report]) -> str:
    """The table printed by the CLI."""
    mesh = " ".join(f"{k}={v}" for k, v in setup["mesh"].items())
    lines = [
        f"slice {setup['topology']} x {setup['num_slices']}: {setup['chips']} chips of {setup['device_kind']} "
        f"({setup['hbm_gib_per_chip']:.0f} GiB HBM, {setup['peak_bf16_tflops']:.0f} bf16 TFLOP/s each), "
        f"{setup['hosts']} hosts; mesh {mesh}",
        f"step: {setup['rows']} rows x {setup['frames_per_row']} frame slots (up to {setup['videos_per_row']} videos), "
        f"{setup['input_tokens']} input tokens "
        f"per row -> {setup['llm_tokens']} LLM tokens; accumulate {setup['accumulate_steps']}, remat "
        f"{setup['remat_policy']}, {setup['dtype']} compute; splash attention",
        "",
        f"{'program':<8} {'method':<6} {'k':>4} {'LLM tok':>7} {'args':>6} {'out':>6} {'temp':>6} {'peak':>6} "
        f"{'HBM':>5} {'margin':>7} {'TFLOP':>8} {'kernel':>6} {'XLA s':>7} {'attn s':>7} {'step s':>7} "
        f"{'compile':>7}  fits",
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
        lines.append(
            f"{head} {memory} {r.flops / 1e12:>8.1f} {r.kernel_flops / r.flops:>6.1%} {r.xla_seconds:>7.3f} "
            f"{r.kernel_seconds:>7.3f} {r.step_seconds:>7.3f} {r.compile_seconds:>6.0f}s  {verdict}"
        )
    lines.append(
        "per chip: memory in GiB (peak = max(XLA peak, args + out - aliased + temp)); TFLOP of the step, "
        "'kernel' the splash kernels' share; step s = XLA s (TPU cost model, all other ops) + attn s (kernels "
        "at peak bf16)"
    )
    if any(math.isnan(r.xla_seconds) for r in reports if not r.error):
        lines.append("XLA's cost model priced an unknown op at -1 s: that program's time is unknown (nan).")
    if any(r.cost_source == "scan" for r in reports):
        lines.append("--cost=scan: FLOPs and times count each scanned layer stack ONCE, not the step's totals.")
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


def main(argv: list[str]) -> int:
    from absl import flags

    del argv
    f = flags.FLAGS
    # Describe and compile for the slice only: never initialise a local accelerator.
    jax.config.update("jax_platforms", "cpu")
    logging.getLogger("stts_jax").setLevel(logging.INFO)  # progress: each compile takes minutes
    try:
        setup, reports = run(
            f.config, f.topology, f.num_slices, f.cost, f.baseline, tuple(f.programs), f.baseline_memory, f.memory
        )
    except AOTError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    print(format_reports(setup, reports))
    if f.json:
        rows = [
            dataclasses.asdict(r) | {"resident_bytes": r.resident_bytes, "fits": r.fits, "step_seconds": r.step_seconds}
            for r in reports
        ]
        with open(f.json, "w") as out:
            json.dump({"setup": setup, "programs": rows}, out, indent=2)
    problems = failures(reports)
    for problem in problems:
        print(f"error: {problem}", file=sys.stderr)
    return 1 if problems else 0


def _define_flags() -> None:
    from absl import flags
    from ml_collections import config_flags

    config_flags.DEFINE_config_file("config", None, "experiment config file (configs/*.py:args)", lock_config=True)
    flags.DEFINE_string("topology", None, "TPU slice, e.g. v5p:2x2x2, v5e:4x4, v6e:8x8")
    flags.DEFINE_integer("num_slices", 1, "slices joined over DCN (multi-slice); mesh 'data' spans them")
    flags.DEFINE_string("json", None, "also write the setup and every program's figures here")
    flags.DEFINE_enum("cost", "extrapolate", ["extrapolate", "scan"], "FLOPs/time: every layer counted, or as scanned")
    flags.DEFINE_bool("baseline", True, "also compile k = 0 (stts.method=none) on the same batches")
    flags.DEFINE_list("programs", ["train", "prefill"], "which steps to compile: train, prefill")
    flags.DEFINE_bool("memory", True, "the configured program's memory (its full compile), not only its cost")
    flags.DEFINE_bool("baseline_memory", True, "k = 0: also its memory (one more full compile), not only its cost")
    flags.mark_flags_as_required(["config", "topology"])


if __name__ == "__main__":
    from absl import app

    _define_flags()
    app.run(lambda argv: sys.exit(main(argv)))
