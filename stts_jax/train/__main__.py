"""Train: python -m stts_jax.train --config=configs/synthetic.py:variant=tiny --workdir=DIR [--config.x.y=v]."""

from __future__ import annotations

import logging
import os

import jax
from absl import app, flags
from absl import logging as absl_logging
from ml_collections import config_flags

from stts_jax.train.loop import train

config_flags.DEFINE_config_file("config", None, "experiment config file (configs/*.py:args)", lock_config=True)
flags.DEFINE_string("workdir", None, "run directory: checkpoints, metrics; resumed if it holds a checkpoint")
flags.DEFINE_string("coordinator", None, "host:port of process 0 for jax.distributed (local multi-process runs)")
flags.DEFINE_integer("num_processes", None, "processes in the run (with --coordinator)")
flags.DEFINE_integer("process_id", None, "this process's index (with --coordinator)")
flags.DEFINE_bool("distributed", False, "call jax.distributed.initialize() with auto-detection (TPU pods)")
flags.mark_flags_as_required(["config", "workdir"])


def main(argv):
    del argv
    absl_logging.set_verbosity(absl_logging.WARNING)  # Orbax and grain log every step at INFO
    logging.getLogger("stts_jax").setLevel(logging.INFO)
    f = flags.FLAGS
    if f.coordinator:
        jax.distributed.initialize(f.coordinator, num_processes=f.num_processes, process_id=f.process_id)
    elif f.distributed:
        jax.distributed.initialize()
    os.makedirs(f.workdir, exist_ok=True)
    metrics = train(flags.FLAGS.config, flags.FLAGS.workdir)
    print(f"finished at step {int(metrics.get('step', 0))}: loss {metrics.get('loss', float('nan')):.4f}")


if __name__ == "__main__":
    app.run(main)
