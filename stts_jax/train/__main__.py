"""Train: python -m stts_jax.train --config=configs/synthetic.py:variant=tiny --workdir=DIR [--config.x.y=v]."""

from __future__ import annotations

import sys

import jax
from absl import flags
from ml_collections import config_flags

from stts_jax import cli
from stts_jax.train.checkpoint import workdir_path
from stts_jax.train.loop import train

PREEMPTED_EXIT_CODE = 143  # 128 + SIGTERM, what a shell reports for a process ended by SIGTERM

config_flags.DEFINE_config_file("config", None, "experiment config file (configs/*.py:args)", lock_config=True)
flags.DEFINE_string("workdir", None, "run directory: checkpoints, metrics; resumed if it holds a checkpoint")
flags.DEFINE_string("coordinator", None, "host:port of process 0 for jax.distributed (local multi-process runs)")
flags.DEFINE_integer("num_processes", None, "processes in the run (with --coordinator)")
flags.DEFINE_integer("process_id", None, "this process's index (with --coordinator)")
flags.DEFINE_bool("distributed", False, "call jax.distributed.initialize() with auto-detection (TPU pods)")
flags.mark_flags_as_required(["config", "workdir"])


def main(argv):
    del argv
    f = flags.FLAGS
    if f.coordinator:
        jax.distributed.initialize(f.coordinator, num_processes=f.num_processes, process_id=f.process_id)
    elif f.distributed:
        jax.distributed.initialize()
    workdir_path(f.workdir).mkdir(parents=True, exist_ok=True)
    metrics = train(f.config, f.workdir)
    step = int(metrics.get("step", 0))
    if metrics.get("preempted"):
        # non-zero, so that a job scheduler (GKE JobSet, xpk --max-restarts) restarts the run
        print(f"stopped by {metrics['stopped_by']} at step {step}, checkpoint saved; rerun the same command to resume")
        sys.exit(PREEMPTED_EXIT_CODE)
    print(f"finished at step {step}: loss {metrics.get('loss', float('nan')):.4f}")


if __name__ == "__main__":
    cli.run(main)
