"""The training loop: data, mesh, sharded state, resume, steps, metrics, checkpoints, SIGTERM.

Every host runs the same command; each reads its own data shard and the global batch is assembled
with `jax.make_array_from_process_local_data`. The run resumes from the latest checkpoint in
`workdir` (state and data iterator); SIGTERM (TPU preemption) saves and returns cleanly.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import signal
import time

import jax
import ml_collections
import tensorflow_datasets as tfds
import tqdm
from jax.experimental import multihost_utils

from stts_jax.configs import model_config, pipeline_config
from stts_jax.data.builders import SyntheticBuilderConfig, build_synthetic
from stts_jax.data.pipeline import make_dataset, to_model_batch
from stts_jax.data.synthetic import SyntheticConfig
from stts_jax.data.tokenizer import synthetic_tokenizer
from stts_jax.train import checkpoint
from stts_jax.train.optimizer import OptimizerConfig, make_optimizer
from stts_jax.train.sharding import MeshConfig, batch_sharding, make_mesh, state_shardings
from stts_jax.train.step import init_state, param_shapes, sharded_init, sharded_train_step

log = logging.getLogger(__name__)


class TrainingError(RuntimeError):
    """Training cannot go on; the message says why and what to change."""


def _source(config: ml_collections.ConfigDict, split: str):
    data = config.data
    if data.dataset == "synthetic_video_qa":
        synthetic = SyntheticConfig(frames=data.frames)
        name = f"f{data.frames}"
        counts = (("train", data.train_examples), ("validation", data.eval_examples), ("test", data.test_examples))
        if jax.process_index() == 0:  # one writer; the other hosts wait for it
            build_synthetic(data.data_dir, SyntheticBuilderConfig(name=name, synthetic=synthetic, num_examples=counts))
        if jax.process_count() > 1:
            multihost_utils.sync_global_devices("synthetic dataset built")
        return tfds.data_source(f"synthetic_video_qa/{name}", data_dir=data.data_dir, split=split), (
            synthetic_tokenizer(synthetic.vocabulary())
        )
    raise TrainingError(f"data.dataset {data.dataset!r}: the training loop reads synthetic_video_qa so far.")


def _global(batch_array, sharding):
    return jax.make_array_from_process_local_data(sharding, batch_array)


def train(config: ml_collections.ConfigDict, workdir: str) -> dict:
    """Trains to config.train.steps (resuming from `workdir`); returns the last step's metrics."""
    model = model_config(config)
    pipeline = pipeline_config(config, model)
    if model.stts.prunes and model.stts.llm_seq_len is None:
        model = dataclasses.replace(model, stts=dataclasses.replace(model.stts, llm_seq_len=pipeline.llm_seq_len))
    source, tokenizer = _source(config, "train")
    dataset, preprocess = make_dataset(source, model, pipeline, tokenizer)
    mesh = make_mesh(MeshConfig(**config.train.mesh))
    rows = batch_sharding(mesh, pipeline.batch_size * jax.process_count())

    sample_video, sample_targets = to_model_batch(next(iter(dataset)), model)  # shapes only
    opt_cfg = OptimizerConfig(
        **{k: tuple(map(tuple, v)) if k == "learning_rates" else v for k, v in config.train.optimizer.items()}
    )
    optimizer = make_optimizer(opt_cfg, param_shapes(model, sample_video))
    state_shape = jax.eval_shape(lambda b: init_state(model, optimizer, b, config.train.seed), sample_video)
    shardings = state_shardings(state_shape, mesh)
    mgr = checkpoint.manager(workdir, config.train.keep_checkpoints)
    iterator = iter(dataset)
    restored = checkpoint.restore(mgr, state_shape, shardings, iterator)
    if restored is None:
        global_sample = jax.tree.map(lambda x: _global(x, rows), sample_video)
        state = sharded_init(model, optimizer, global_sample, config.train.seed, shardings)
    else:
        state = restored
        log.info("resumed from step %d in %s", int(state.step), workdir)
    accumulate = config.train.get("accumulate_steps", 1)
    if pipeline.batch_size % accumulate:
        raise TrainingError(
            f"data.batch_size {pipeline.batch_size} is not divisible by train.accumulate_steps {accumulate}."
        )
    step_fn = sharded_train_step(model, optimizer, shardings, rows, accumulate)

    stop = {"requested": False}
    previous = signal.signal(signal.SIGTERM, lambda *_: stop.update(requested=True))
    primary = jax.process_index() == 0
    metrics_file = open(os.path.join(workdir, "metrics.jsonl") if primary else os.devnull, "a")  # noqa: SIM115
    metrics: dict = {}
    try:
        step = int(state.step)
        bar = tqdm.tqdm(total=config.train.steps, initial=step, desc="train", disable=jax.process_index() != 0)
        while step < config.train.steps and not stop["requested"]:
            start = time.perf_counter()
            video, targets = to_model_batch(next(iterator), model)
            state, metrics = step_fn(state, jax.tree.map(lambda x: _global(x, rows), video), _global(targets, rows))
            metrics = {k: float(v) for k, v in jax.device_get(metrics).items()}
            if metrics.get("overflow_rows", 0) > 0:
                raise TrainingError(
                    f"step {step}: {int(metrics['overflow_rows'])} row(s) overflowed a static STTS buffer or lost "
                    "placeholders; raise stts.max_videos_per_row / data.llm_seq_len to match the data."
                )
            if metrics["rejected"]:
                log.warning("step %d: non-finite loss or gradient; the update was rejected, state kept", step)
            step = int(state.step)
            metrics.update(
                step=step, step_seconds=time.perf_counter() - start, skipped_examples=sum(preprocess.skipped.values())
            )
            metrics_file.write(json.dumps(metrics) + "\n")
            bar.update(1 - int(metrics["rejected"]))
            bar.set_postfix(loss=f"{metrics['loss']:.3f}")
            if step % config.train.checkpoint_every == 0 or step == config.train.steps or stop["requested"]:
                checkpoint.save(mgr, step, state, iterator)
        bar.close()
    finally:
        mgr.wait_until_finished()
        metrics_file.close()
        signal.signal(signal.SIGTERM, previous)
    return metrics
