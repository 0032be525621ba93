"""The training loop: data, mesh, sharded state, resume, steps, validation, metrics, checkpoints, SIGTERM.

Every host runs the same command; each reads its own data shard and the global batch is assembled
with `jax.make_array_from_process_local_data`. The run resumes from the latest checkpoint in
`workdir` (state and data iterator), or starts from `train.init_from` (a Hugging Face Molmo2
directory or another run's workdir: its parameters, with a fresh scorer where it has none) or from
scratch. A workdir holds one experiment: resuming with a config that changes it is refused
(`checkpoint.record_experiment`), and a damaged latest checkpoint gives way to the one before it.
SIGTERM (TPU preemption) or SIGINT (Ctrl-C) saves and returns with `preempted` set (the CLI then exits
143, so a job scheduler restarts it). Metrics go to TensorBoard event files and metrics.jsonl in
`workdir` (local or gs://).
"""

from __future__ import annotations

import dataclasses
import hashlib
import itertools
import logging
import math
import signal
import sys
import time

import flax.traverse_util
import grain
import jax
import ml_collections
import numpy as np
import optax
import tqdm

from stts_jax.accelerators import accelerator, memory_summary, mfu
from stts_jax.convert.hf import load_molmo2
from stts_jax.data.pipeline import make_dataset, to_model_batch
from stts_jax.data.sources import source
from stts_jax.errors import CheckpointError, TrainingError
from stts_jax.pictures import kept_windows_picture
from stts_jax.train import checkpoint
from stts_jax.train.experiment import training_setup
from stts_jax.train.loss import combine_metrics
from stts_jax.train.metrics import MetricsWriter
from stts_jax.train.optimizer import group_sizes, learning_rates, make_optimizer
from stts_jax.train.sharding import MeshConfig, batch_sharding, make_mesh, state_shardings
from stts_jax.train.step import init_state, model_flops, sharded_eval_step, sharded_init, sharded_train_step
from stts_jax.vlm.model import param_shapes

log = logging.getLogger(__name__)

PREFETCH_BATCHES = 2  # device batches prepared ahead of the step that takes them
PROGRESS_SECONDS = 30.0  # a progress line this often when the output is not a terminal
PICTURE_ROWS, PICTURE_FRAMES = 2, 8  # the evaluation pictures: rows of the first validation batch, frames each


def _pretrained(path: str) -> dict:
    """Flat parameters of a training run's workdir (its latest checkpoint) or a Hugging Face Molmo2 directory."""
    if (checkpoint.workdir_path(path) / "checkpoints").exists():
        _, params, step = checkpoint.restore_params(path)
        log.info("starting from step %d of the run in %s", step, path)
    else:
        _, params = load_molmo2(path)
    return flax.traverse_util.flatten_dict(params, sep="/")


def init_from_pretrained(state, path: str, shardings):
    """`state` with every parameter that `path` (a Hugging Face Molmo2 directory or a run's workdir)
    holds replaced by its value; the parameters it lacks (the STTS scorer) keep their fresh
    initialisation, and a scorer this model does not have is left out."""
    ours = flax.traverse_util.flatten_dict(state.params, sep="/")
    theirs = {n: v for n, v in _pretrained(path).items() if n in ours or not n.startswith("scorer/")}
    place = flax.traverse_util.flatten_dict(shardings.params, sep="/")
    for name, value in theirs.items():
        if name not in ours or ours[name].shape != value.shape:
            found = "missing here" if name not in ours else f"{value.shape} there, {ours[name].shape} here"
            raise CheckpointError(
                f"{path}: parameter {name} does not fit this model ({found}); set model.variant to the "
                "checkpoint's sizes."
            )
    fresh = sorted(n for n in ours if n not in theirs)
    if any(not n.startswith("scorer/") for n in fresh):
        raise CheckpointError(f"{path} lacks {[n for n in fresh if not n.startswith('scorer/')][:5]} of this model.")
    value = lambda n: np.asarray(theirs[n], ours[n].dtype)
    params = {
        n: jax.make_array_from_callback(ours[n].shape, place[n], lambda i, n=n: value(n)[i]) if n in theirs else ours[n]
        for n in ours
    }
    log.info("initialised from %s (%d tensors; fresh: %s)", path, len(theirs), ", ".join(fresh) or "none")
    return state.replace(params=flax.traverse_util.unflatten_dict(params, sep="/"))


def run_summary(config: ml_collections.ConfigDict, mesh, shapes, optimizer_cfg) -> str:
    """One line on what a run is: processes, devices, mesh, parameters per optimizer group, config hash."""
    devices = jax.devices()
    sizes = group_sizes(shapes, optimizer_cfg)
    groups = ", ".join(f"{name} {n / 1e6:.2f} M" for name, n in sizes.items() if n)
    digest = hashlib.sha256(config.to_json(sort_keys=True).encode()).hexdigest()[:12]
    return (
        f"run: {jax.process_count()} process(es), {len(devices)} {devices[0].platform} device(s) "
        f"({devices[0].device_kind}); mesh {dict(mesh.shape)}; parameters {sum(sizes.values()) / 1e6:.2f} M "
        f"({groups}); config sha256 {digest}"
    )


def _global(batch_array, sharding):
    return jax.make_array_from_process_local_data(sharding, batch_array)


def _device_batch(batch: dict, model, layout, rows):
    """A host batch -> (VideoBatch, targets) as global arrays in the `rows` sharding."""
    return jax.tree.map(lambda x: _global(x, rows), to_model_batch(batch, model, layout))


def _device_batches(dataset: grain.IterDataset, model, layout, rows) -> grain.IterDataset:
    """Host batches turned into global device arrays by a background thread, `PREFETCH_BATCHES` ahead, so
    that the host prepares the next batches while the device computes. grain's prefetch keeps the
    checkpointed iterator state at the batches the loop has taken, not those in the buffer."""
    place = lambda batch: _device_batch(batch, model, layout, rows)
    return grain.experimental.ThreadPrefetchIterDataset(dataset.map(place), prefetch_buffer_size=PREFETCH_BATCHES)


def _preloaded(dataset: grain.IterDataset, count: int, model, layout, rows) -> grain.IterDataset:
    """The first `count` batches of `dataset` as global device arrays, repeated without end: input that costs
    nothing per step (config.train.preload_batches; compare its step time with the real input's)."""
    batches = [_device_batch(b, model, layout, rows) for b in itertools.islice(iter(dataset), count)]
    return grain.MapDataset.source(batches).repeat().to_iter_dataset(grain.ReadOptions(num_threads=0))


def _optimizer_updates(opt_state) -> int:
    """Accepted updates so far: optax's own count (the learning-rate schedules follow it)."""
    counts = optax.tree_utils.tree_get_all_with_path(opt_state, "count")
    return int(counts[0][1]) if counts else 0


def _hparams(config: ml_collections.ConfigDict) -> dict:
    flat = flax.traverse_util.flatten_dict(config.to_dict(), sep=".")
    return {k: v if isinstance(v, bool | int | float | str) else str(v) for k, v in flat.items()}


def _pictures(batch: dict, chosen: dict, model, frames: int = PICTURE_FRAMES) -> tuple[dict, dict]:
    """Images of the kept windows over the first `frames` frames of the first video of each of the first rows
    of a validation batch, and the histogram of every real frame's window scores."""
    video_ids = np.asarray(batch["pixels_segment_ids"])
    scores, keep = np.asarray(chosen["scores"]), np.asarray(chosen["keep"])
    images = {}
    for row in range(min(PICTURE_ROWS, len(video_ids))):
        slots = np.flatnonzero(video_ids[row] == 1)[:frames]
        if len(slots):
            picture = kept_windows_picture(batch["pixels"][row][slots], keep[row][slots], scores[row][slots], model)
            images[f"validation/kept_windows/row{row}"] = picture
    return images, {"validation/window_scores": scores[video_ids > 0]}


class _Progress:
    """A tqdm bar on a terminal; elsewhere (a pod's log) one line every `PROGRESS_SECONDS` and at the end."""

    def __init__(self, total: int, initial: int, enabled: bool):
        self.total, self.enabled, self.last_line = total, enabled, -math.inf
        self.bar = tqdm.tqdm(total=total, initial=initial, desc="train") if enabled and sys.stderr.isatty() else None

    def update(self, step: int, m: dict) -> None:
        if self.bar is not None:
            self.bar.update(step - self.bar.n)
            self.bar.set_postfix(loss=f"{m['loss']:.3f}", acc=f"{m['answer_accuracy']:.2f}")
        elif self.enabled and (time.monotonic() - self.last_line >= PROGRESS_SECONDS or step == self.total):
            self.last_line = time.monotonic()
            mfu = "" if math.isnan(m["mfu"]) else f", MFU {100 * m['mfu']:.1f}%"
            log.info(
                "step %d/%d: loss %.4f, answer accuracy %.3f, %.3f s/step, %.0f tokens/s%s, input wait %.3f s",
                *(step, self.total, m["loss"], m["answer_accuracy"], m["step_seconds"], m["tokens_per_second"]),
                *(mfu, m["input_wait_seconds"]),
            )

    def write(self, text: str) -> None:
        if self.bar is not None:
            self.bar.write(text)
        elif self.enabled:
            log.info("%s", text)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def train(config: ml_collections.ConfigDict, workdir: str, progress: bool = True) -> dict:
    """Trains to config.train.steps (resuming from `workdir`); returns the last step's train metrics."""
    setup = training_setup(config)
    model, pipeline = setup.model, setup.pipeline
    train_cfg = config.train
    mgr = checkpoint.manager(workdir, train_cfg.keep_checkpoints)
    # one experiment per workdir: checked before anything is built, written by process 0
    checkpoint.record_experiment(workdir, config, mgr.latest_step() is not None, write=jax.process_index() == 0)
    if pipeline.batch_size % train_cfg.accumulate_steps:
        raise TrainingError(
            f"data.batch_size {pipeline.batch_size} is not divisible by train.accumulate_steps "
            f"{train_cfg.accumulate_steps}; choose a divisor of the batch size."
        )
    train_source, tokenizer = source(config, "train")
    dataset, preprocess = make_dataset(train_source, model, pipeline, tokenizer)
    build_skips = getattr(train_source, "report", {}).get("skipped", {})  # lines a manifest build skipped
    if build_skips:
        log.warning("the training data's build skipped %d example(s): %s", sum(build_skips.values()), build_skips)
    validation = None
    if train_cfg.eval_every:
        eval_pipeline = dataclasses.replace(pipeline, shuffle=False)  # the same batches at every evaluation
        validation, _ = make_dataset(source(config, "validation")[0], model, eval_pipeline, tokenizer)
    mesh = make_mesh(MeshConfig(**train_cfg.mesh))
    rows = batch_sharding(mesh, pipeline.batch_size * jax.process_count())

    sample_video, sample_targets = to_model_batch(next(iter(dataset)), model, pipeline.layout)  # shapes only
    shapes = param_shapes(model)
    optimizer = make_optimizer(setup.optimizer, shapes)
    log.info("%s", run_summary(config, mesh, shapes, setup.optimizer))
    state_shape = jax.eval_shape(lambda b: init_state(model, optimizer, b, train_cfg.seed), sample_video)
    shardings = state_shardings(state_shape, mesh)
    if train_cfg.get("preload_batches", 0):
        log.info("training on %d batches held on the devices (train.preload_batches)", train_cfg.preload_batches)
        iterator = iter(_preloaded(dataset, train_cfg.preload_batches, model, pipeline.layout, rows))
    else:
        iterator = iter(_device_batches(dataset, model, pipeline.layout, rows))
    state = checkpoint.restore(mgr, state_shape, shardings, iterator)
    if state is None:
        global_sample = jax.tree.map(lambda x: _global(x, rows), sample_video)
        state = sharded_init(model, optimizer, global_sample, train_cfg.seed, shardings)
        if train_cfg.init_from:
            state = init_from_pretrained(state, train_cfg.init_from, shardings)
    else:
        log.info("resumed from step %d in %s", int(state.step), workdir)

    global_rows = lambda x: (x.shape[0] * jax.process_count(), *x.shape[1:])
    batch_shapes = jax.tree.map(
        lambda x: jax.ShapeDtypeStruct(global_rows(x), x.dtype, sharding=rows), (sample_video, sample_targets)
    )
    start = time.perf_counter()
    step_fn = sharded_train_step(model, optimizer, shardings, rows, train_cfg.accumulate_steps)
    step_fn = step_fn.lower(state, *batch_shapes).compile()
    compile_seconds = time.perf_counter() - start
    flops = model_flops(model, optimizer, state, *batch_shapes)
    device_kind = jax.devices()[0].device_kind
    found = accelerator(device_kind)
    log.info(
        "train step compiled in %.1f s; per device %s; %.4g model TFLOP per step; peak %s",
        compile_seconds,
        memory_summary(step_fn),
        flops / 1e12,
        f"{found.peak_bf16_tflops:g} bf16 TFLOP/s per device ({found.source})" if found else "unknown here: no MFU",
    )
    eval_fn = sharded_eval_step(model, shardings.params, rows)

    def evaluate(params) -> tuple[dict[str, float], dict, dict]:
        batches, eval_iterator = [], iter(validation)
        rng = jax.random.key_data(jax.random.key(train_cfg.seed))
        images, histograms = {}, {}
        for i in range(train_cfg.eval_batches):
            host_batch = next(eval_iterator)
            video, targets = _device_batch(host_batch, model, pipeline.layout, rows)
            result, chosen = eval_fn(params, video, targets, rng)
            batches.append({k: float(v) for k, v in jax.device_get(result).items()})
            if i == 0 and chosen:
                images, histograms = _pictures(host_batch, jax.device_get(chosen), model)
        stacked = {k: np.asarray([b[k] for b in batches]) for k in batches[0]}
        return {k: float(v) for k, v in combine_metrics(stacked).items()}, images, histograms

    stop = {"requested": False}
    request_stop = lambda signum, _: stop.update(requested=True, by=signal.Signals(signum).name)
    previous = {s: signal.signal(s, request_stop) for s in (signal.SIGTERM, signal.SIGINT)}  # Ctrl-C saves too
    step = int(state.step)
    writer = MetricsWriter(workdir, step, enabled=jax.process_index() == 0)
    if step == 0:
        writer.write_hparams(_hparams(config), ["validation/answer_accuracy", "train/loss"])
    updates = _optimizer_updates(state.opt_state)
    bar = _Progress(train_cfg.steps, step, progress and jax.process_index() == 0)
    metrics: dict = {}
    last = time.perf_counter()

    def report(pending) -> dict:
        """The train metrics of a step the device has finished (fetched one step late)."""
        nonlocal updates, last, compile_seconds
        at, device_metrics, input_wait = pending
        metrics = {k: float(v) for k, v in jax.device_get(device_metrics).items()}
        now = time.perf_counter()
        seconds, last = now - last, now
        if metrics.get("overflow_rows", 0) > 0:
            raise TrainingError(
                f"step {at}: {int(metrics['overflow_rows'])} row(s) overflowed a static STTS buffer or lost "
                "placeholders; check data.max_videos_per_row / data.llm_seq_len."
            )
        if metrics["rejected"]:
            log.warning("step %d: non-finite loss or gradient; the update was rejected, parameters kept", at)
        rates = learning_rates(setup.optimizer, updates)
        updates += 1 - int(metrics["rejected"])
        metrics.update(
            step_seconds=seconds,
            input_wait_seconds=input_wait,
            tokens_per_second=metrics["llm_tokens"] / seconds,
            mfu=mfu(flops, seconds, jax.device_count(), device_kind),
            skipped_examples=sum(preprocess.skipped.values()),
            build_skipped_examples=sum(build_skips.values()),
            **{f"learning_rate/{group}": rate for group, rate in rates.items()},
        )
        if compile_seconds is not None:  # the first step of this start: its compile, apart from its time
            metrics.update(compile_seconds=compile_seconds, model_tflop_per_step=flops / 1e12)
            compile_seconds = None
        writer.write(at, metrics, "train")
        bar.update(at, metrics)
        return metrics

    pending = None
    try:
        while step < train_cfg.steps and not stop["requested"]:
            waited = time.perf_counter()
            video, targets = next(iterator)
            waited = time.perf_counter() - waited
            state, device_metrics = step_fn(state, video, targets)
            step += 1
            if pending is not None:
                metrics = report(pending)
            pending = (step, device_metrics, waited)
            save = step % train_cfg.checkpoint_every == 0 or step == train_cfg.steps or stop["requested"]
            due = validation is not None and (step % train_cfg.eval_every == 0 or step == train_cfg.steps)
            if save or due:
                metrics, pending = report(pending), None
            if save:
                checkpoint.save(mgr, step, state, iterator)
                writer.upload()  # a gs:// workdir: the rows up to this checkpoint are in the bucket
            if due:
                result, images, histograms = evaluate(state.params)
                writer.write(step, result, "validation")
                writer.write_images(step, images)
                writer.write_histograms(step, histograms)
                bar.write(f"step {step}: validation answer accuracy {result['answer_accuracy']:.3f}")
            if save or due:
                last = time.perf_counter()  # the next step's time leaves out the save and the evaluation
        if pending is not None:
            metrics = report(pending)
        bar.close()
        metrics.update(step=step, preempted=step < train_cfg.steps, stopped_by=stop.get("by"))
    finally:
        mgr.wait_until_finished()
        writer.close()
        for s, handler in previous.items():
            signal.signal(s, handler)
    return metrics
