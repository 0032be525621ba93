"""The programs a run compiles for the slice (the train step and a prefill), built from the experiment config
as the training loop builds them, their model FLOPs, and `run`, which compiles them and k = 0 beside them."""

from __future__ import annotations

import dataclasses
import gc
import logging
import time
from collections.abc import Callable

import jax
import jax.numpy as jnp
import ml_collections
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from stts_jax.accelerators import accelerator
from stts_jax.aot.cost import extrapolated_cost, mosaic_calls, program_cost
from stts_jax.aot.report import Report
from stts_jax.aot.topology import GIB, chip_spec, slice_mesh, topology_devices
from stts_jax.bench.flops import abstract_batch, program_model_flops
from stts_jax.data.pipeline import input_seq_len
from stts_jax.errors import AOTError, ConfigError
from stts_jax.models.config import Molmo2Config
from stts_jax.models.llm import init_cache
from stts_jax.train.experiment import training_setup
from stts_jax.train.optimizer import OptimizerConfig, make_optimizer
from stts_jax.train.sharding import MeshConfig, batch_sharding, param_shardings, state_shardings
from stts_jax.train.step import init_state, model_flops, sharded_train_step
from stts_jax.vlm.model import Molmo2, RowLayout, VideoBatch, param_shapes

log = logging.getLogger(__name__)


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
    layout: RowLayout  # the rows' static shape, as the pipeline packs them
    accumulate: int
    optimizer: OptimizerConfig

    @property
    def llm_tokens(self) -> int:
        return self.layout.llm_seq_len if self.model.stts.prunes else self.input_tokens

    @property
    def prune_ratio(self) -> float:
        return self.model.stts.prune_ratio if self.model.stts.prunes else 0.0

    def baseline(self) -> Workload:
        """k = 0 on the same batches: no pruning, the LLM runs on every input token."""
        return dataclasses.replace(self, model=self.model.with_stts(method="none"))


def workload(config: ml_collections.ConfigDict, hosts: int) -> Workload:
    """The config's model (splash attention) and batch shapes, as the training loop builds them."""
    setup = training_setup(config, attention_impl="splash")
    model, pipeline = setup.model, setup.pipeline
    return Workload(
        model=model,
        rows=pipeline.batch_size * hosts,  # data.batch_size is per host, as in the training loop
        frames=pipeline.max_frames,
        input_tokens=input_seq_len(model, pipeline),
        layout=pipeline.layout,
        accumulate=config.train.get("accumulate_steps", 1),
        optimizer=setup.optimizer,
    )


def _batch(w: Workload, cfg: Molmo2Config, rows: int) -> tuple[VideoBatch, jax.ShapeDtypeStruct]:
    batch = abstract_batch(cfg, rows, w.frames, w.input_tokens, w.layout)
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
        optimizer = make_optimizer(w.optimizer, param_shapes(cfg))
        state = jax.eval_shape(lambda b: init_state(cfg, optimizer, b, 0), batch)
        shardings = state_shardings(state, mesh)
        step = sharded_train_step(cfg, optimizer, shardings, sharding, accumulate)
        args = _abstract(state, shardings), _abstract(batch, sharding), _abstract(targets, sharding)
        return _compile(step, mesh, *args)

    return build


def _report(program: str, w: Workload, mesh: Mesh, chip: tuple[float, float]) -> Report:
    return Report(
        program,
        w.model.stts.method,
        w.prune_ratio,
        w.llm_tokens,
        chip[0],
        chips=mesh.devices.size,
        device_kind=mesh.devices.flat[0].device_kind,
    )


def train_model_flops(w: Workload) -> float:
    """The train step's model FLOPs (`train.step.model_flops`) over the whole global batch: accumulating it in
    micro-batches changes how the step runs, not what the model computes."""
    batch, targets = _batch(w, w.model, w.rows)
    optimizer = make_optimizer(w.optimizer, param_shapes(w.model))
    state = jax.eval_shape(lambda b: init_state(w.model, optimizer, b, 0), batch)
    return model_flops(w.model, optimizer, state, batch, targets)


def train_report(w: Workload, mesh: Mesh, chip: tuple[float, float], cost: str, memory: bool = True) -> Report:
    """`sharded_train_step` for `w` on `mesh`. Its accumulated micro-batches run in a loop, which XLA
    also counts once: the cost compiles take one micro-batch per step and are scaled by their number
    (so the optimizer update, a few milliseconds, is counted that many times)."""
    if w.rows % w.accumulate:
        raise AOTError(f"global batch {w.rows} is not divisible by train.accumulate_steps {w.accumulate}.")
    build = train_build(w, mesh, w.rows, w.accumulate)
    report = _report("train", w, mesh, chip)
    if w.accumulate == 1:
        measure(report, build, w.model, chip, cost, memory=memory)
    else:
        micro_batch = train_build(w, mesh, w.rows // w.accumulate, 1)
        measure(report, build, w.model, chip, cost, cost_build=micro_batch, repeat=w.accumulate, memory=memory)
    if not report.error:
        report.model_flops = train_model_flops(w)
    return report


def prefill_fn(cfg: Molmo2Config, rows: int, llm_tokens: int) -> Callable:
    """(params, batch) -> (logits of each row's last token [rows, vocab], KV cache [.., llm_tokens, ..]):
    the forward over the whole prompt."""
    model = Molmo2(cfg)

    def prefill(params, batch: VideoBatch):
        cache = init_cache(cfg, rows, llm_tokens)
        logits, forward = model.apply(
            {"params": params}, batch, cache, rngs={"stts": jax.random.key(0)}, method=Molmo2.prefill
        )
        return logits, forward.cache

    return prefill


def prefill_model_flops(w: Workload) -> float:
    """The prefill's model FLOPs over the global batch, counted as the train step's (`program_model_flops`)."""
    batch, _ = _batch(w, w.model, w.rows)
    make_prefill = lambda cfg: prefill_fn(cfg, w.rows, w.llm_tokens)
    return program_model_flops(make_prefill, w.model, param_shapes(w.model), batch)


def prefill_report(w: Workload, mesh: Mesh, chip: tuple[float, float], cost: str, memory: bool = True) -> Report:
    """The forward over the whole prompt into a KV cache, and the logits of each row's last token."""
    rows = NamedSharding(mesh, PartitionSpec(("data", "fsdp")))

    def build(cfg: Molmo2Config):
        batch, _ = _batch(w, cfg, w.rows)
        params = param_shapes(cfg)
        shardings = param_shardings(params, mesh)
        fn = jax.jit(prefill_fn(cfg, w.rows, w.llm_tokens), in_shardings=(shardings, rows))
        return _compile(fn, mesh, _abstract(params, shardings), _abstract(batch, rows))

    report = measure(_report("prefill", w, mesh, chip), build, w.model, chip, cost, memory=memory)
    if not report.error:
        report.model_flops = prefill_model_flops(w)
    return report


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
        "peak_source": accelerator(devices[0].device_kind).source,
        "mesh": dict(mesh.shape),
        "rows": w.rows,
        "frames_per_row": w.frames,
        "videos_per_row": w.layout.max_videos_per_row,
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
