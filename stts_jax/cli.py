"""What every command does around its work: start only the backends the machine has, keep the libraries'
chatter out of the log, and answer bad input with one line (`error: ...`, exit 1) that names the problem
and the fix. `--debug` shows the traceback instead; `--verbose` brings back Orbax's, grain's and TFDS's
INFO logs."""

from __future__ import annotations

import logging
import sys
from collections.abc import Callable

from absl import app, flags
from absl import logging as absl_logging

from stts_jax.errors import AOTError, CheckpointError, ConfigError, DataError, TrainingError
from stts_jax.platforms import start_present_backends

flags.DEFINE_bool("debug", False, "show the traceback of an error instead of its one-line message")
flags.DEFINE_bool("verbose", False, "log Orbax, grain and TFDS at INFO (off by default: they narrate every file)")

# errors that a person's input causes: their message is the whole story
INPUT_ERRORS = (AOTError, CheckpointError, ConfigError, DataError, TrainingError, OSError)


def define_process_flags() -> None:
    """The flags of a command that runs as one of several processes: --coordinator / --num_processes /
    --process_id (local multi-process runs), --distributed (auto-detection on TPU pods)."""
    flags.DEFINE_string("coordinator", None, "host:port of process 0 for jax.distributed (local multi-process runs)")
    flags.DEFINE_integer("num_processes", None, "processes in the run (with --coordinator)", lower_bound=1)
    flags.DEFINE_integer("process_id", None, "this process's index (with --coordinator)", lower_bound=0)
    flags.DEFINE_bool("distributed", False, "call jax.distributed.initialize() with auto-detection (TPU pods)")


def distributed_where() -> dict | None:
    """The arguments of jax.distributed.initialize those flags ask for ({} on a pod), None for one process."""
    f = flags.FLAGS
    if f.coordinator:
        return dict(coordinator_address=f.coordinator, num_processes=f.num_processes, process_id=f.process_id)
    return {} if f.distributed else None


def quiet_libraries() -> None:
    """Orbax, grain and TFDS at WARNING; TFDS's builder-config warning (the whole config, twice) left out."""
    absl_logging.set_verbosity(absl_logging.WARNING)
    # TFDS warns with the whole builder config of every dataset it builds, twice
    logging.getLogger("absl").addFilter(lambda record: "Using custom data configuration" not in record.getMessage())


def run(main: Callable[[list[str]], int | None]) -> None:
    """`absl.app.run(main)` with the backends, the logging and the one-line errors above."""

    def wrapped(argv: list[str]) -> None:
        start_present_backends()
        if not flags.FLAGS.verbose:
            quiet_libraries()
        logging.getLogger("stts_jax").setLevel(logging.INFO)
        try:
            code = main(argv)
        except INPUT_ERRORS as e:
            if flags.FLAGS.debug:
                raise
            print(f"error: {e}", file=sys.stderr)
            sys.exit(1)
        sys.exit(code or 0)

    app.run(wrapped)
