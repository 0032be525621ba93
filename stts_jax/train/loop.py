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
import logging
import signal
import time

import flax.traverse_util
import jax
import ml_collections
import numpy as np
import tqdm

from stts_jax.convert.hf import load_molmo2
from stts_jax.data.pipeline import make_dataset, to_model_batch
from stts_jax.data.sources import source
from stts_jax.errors import CheckpointError, TrainingError
from stts_jax.train import checkpoint
from stts_jax.train.experiment import training_setup
from stts_jax.train.loss import combine_metrics
from stts_jax.train.metrics import MetricsWriter
from stts_jax.train.optimizer import group_sizes, make_optimizer
from stts_jax.train.sharding import MeshConfig, batch_sharding, make_mesh, state_shardings
from stts_jax.train.step import init_state, sharded_eval_step, sharded_init, sharded_train_step
from stts_jax.vlm.model import param_shapes

log = logging.getLogger(__name__)


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

    sample_video, _ = to_model_batch(next(iter(dataset)), model, pipeline.layout)  # shapes only
    shapes = param_shapes(model)
    optimizer = make_optimizer(setup.optimizer, shapes)
    log.info("%s", run_summary(config, mesh, shapes, setup.optimizer))
    state_shape = jax.eval_shape(lambda b: init_state(model, optimizer, b, train_cfg.seed), sample_video)
    shardings = state_shardings(state_shape, mesh)
    iterator = iter(dataset)
    state = checkpoint.restore(mgr, state_shape, shardings, iterator)
    if state is None:
        global_sample = jax.tree.map(lambda x: _global(x, rows), sample_video)
        state = sharded_init(model, optimizer, global_sample, train_cfg.seed, shardings)
        if train_cfg.init_from:
            state = init_from_pretrained(state, train_cfg.init_from, shardings)
    else:
        log.info("resumed from step %d in %s", int(state.step), workdir)
    step_fn = sharded_train_step(model, optimizer, shardings, rows, train_cfg.accumulate_steps)
    eval_fn = sharded_eval_step(model, shardings.params, rows)

    def evaluate(params) -> dict[str, float]:
        batches, eval_iterator = [], iter(validation)
        rng = jax.random.key_data(jax.random.key(train_cfg.seed))
        for _ in range(train_cfg.eval_batches):
            video, targets = to_model_batch(next(eval_iterator), model, pipeline.layout)
            result = eval_fn(params, jax.tree.map(lambda x: _global(x, rows), video), _global(targets, rows), rng)
            batches.append({k: float(v) for k, v in jax.device_get(result).items()})
        stacked = {k: np.asarray([b[k] for b in batches]) for k in batches[0]}
        return {k: float(v) for k, v in combine_metrics(stacked).items()}

    stop = {"requested": False}
    request_stop = lambda signum, _: stop.update(requested=True, by=signal.Signals(signum).name)
    previous = {s: signal.signal(s, request_stop) for s in (signal.SIGTERM, signal.SIGINT)}  # Ctrl-C saves too
    writer = MetricsWriter(workdir, int(state.step), enabled=jax.process_index() == 0)
    metrics: dict = {}
    try:
        step = int(state.step)
        bar = tqdm.tqdm(
            total=train_cfg.steps, initial=step, desc="train", disable=not progress or jax.process_index() != 0
        )
        while step < train_cfg.steps and not stop["requested"]:
            start = time.perf_counter()
            video, targets = to_model_batch(next(iterator), model, pipeline.layout)
            state, metrics = step_fn(state, jax.tree.map(lambda x: _global(x, rows), video), _global(targets, rows))
            metrics = {k: float(v) for k, v in jax.device_get(metrics).items()}
            if metrics.get("overflow_rows", 0) > 0:
                raise TrainingError(
                    f"step {step}: {int(metrics['overflow_rows'])} row(s) overflowed a static STTS buffer or lost "
                    "placeholders; check data.max_videos_per_row / data.llm_seq_len."
                )
            if metrics["rejected"]:
                log.warning("step %d: non-finite loss or gradient; the update was rejected, state kept", step)
            step = int(state.step)
            seconds = time.perf_counter() - start
            metrics.update(
                step_seconds=seconds,
                tokens_per_second=metrics["llm_tokens"] / seconds,
                skipped_examples=sum(preprocess.skipped.values()),
                build_skipped_examples=sum(build_skips.values()),
            )
            writer.write(step, metrics, "train")
            bar.update(1 - int(metrics["rejected"]))
            bar.set_postfix(loss=f"{metrics['loss']:.3f}", acc=f"{metrics['answer_accuracy']:.2f}")
            if step % train_cfg.checkpoint_every == 0 or step == train_cfg.steps or stop["requested"]:
                checkpoint.save(mgr, step, state, iterator)
            if validation is not None and (step % train_cfg.eval_every == 0 or step == train_cfg.steps):
                result = evaluate(state.params)
                writer.write(step, result, "validation")
                bar.write(f"step {step}: validation answer accuracy {result['answer_accuracy']:.3f}")
        bar.close()
        metrics.update(step=step, preempted=step < train_cfg.steps, stopped_by=stop.get("by"))
    finally:
        mgr.wait_until_finished()
        writer.close()
        for s, handler in previous.items():
            signal.signal(s, handler)
    return metrics
