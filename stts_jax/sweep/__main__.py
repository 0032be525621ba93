"""Run a sweep, or print its pod commands.

  python -m stts_jax.sweep --config=configs/synthetic.py:variant=tiny,frames=8 \
      --grid="stts.method=stts,random;stts.prune_ratio=0.3,0.5;train.seed=0,1" --root=/tmp/sweep
  python -m stts_jax.sweep --sweep=configs/replication.py --root=/tmp/replication
  python -m stts_jax.sweep --sweep=configs/replication.py --root=gs://bucket/replication --print_commands
  python -m stts_jax.sweep.aggregate --root=/tmp/sweep
"""

from __future__ import annotations

import sys

from absl import flags

from stts_jax import cli
from stts_jax.errors import ConfigError
from stts_jax.sweep.runner import SweepPreempted, load_sweep, parse_grid, pod_commands, run_sweep

FLAGS = flags.FLAGS
flags.DEFINE_string("config", None, "experiment config (configs/x.py:args) the grid varies")
flags.DEFINE_string("grid", None, 'axes "section.field=v1,v2;..." (cartesian product)')
flags.DEFINE_string("sweep", None, "a sweep file (configs/replication.py[:arg]) instead of --config/--grid")
flags.DEFINE_string("root", None, "directory of the runs (one subdirectory per run)")
flags.DEFINE_bool("print_commands", False, "print the pod commands (train on every host, then evaluate)")
flags.mark_flags_as_required(["root"])


def main(argv):
    del argv
    if FLAGS.sweep and (FLAGS.grid or FLAGS.config):
        raise ConfigError(
            "--sweep names its own config and runs; drop --grid/--config, or drop --sweep to vary --config by --grid"
        )
    if FLAGS.sweep:
        path, _, arg = FLAGS.sweep.partition(":")
        sweep = load_sweep(path, arg or None)
    elif FLAGS.config and FLAGS.grid:
        sweep = {"config": FLAGS.config, "runs": parse_grid(FLAGS.grid)}
    else:
        raise ConfigError("pass --sweep=FILE, or --config=configs/x.py:args with --grid=...")
    if FLAGS.print_commands:
        lines = pod_commands(sweep["config"], sweep["runs"], FLAGS.root, sweep.get("fixed"), sweep.get("base"))
        print("\n".join(lines))
        return
    try:
        names = run_sweep(
            sweep["config"],
            sweep["runs"],
            FLAGS.root,
            sweep.get("test_time_scaling", ()),
            sweep.get("fixed"),
            base=sweep.get("base"),
        )
    except SweepPreempted as e:
        print(e, file=sys.stderr)
        sys.exit(143)  # like the train CLI: a scheduler restarts a job that exits non-zero
    print(
        f"{len(names)} runs done in {FLAGS.root}; tabulate with: python -m stts_jax.sweep.aggregate --root={FLAGS.root}"
    )


if __name__ == "__main__":
    cli.run(main)
