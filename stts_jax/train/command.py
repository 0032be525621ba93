"""The command line of `python -m stts_jax.train`, spelled in one place (sweeps and the pod launchers build on it)."""

from __future__ import annotations

import sys
from collections.abc import Mapping

PREEMPTED_EXIT_CODE = 143  # 128 + SIGTERM, what a shell reports for a process ended by SIGTERM
PEER_LOST_EXIT_CODE = 75  # EX_TEMPFAIL (sysexits.h): a temporary failure whose fix is to rerun


def override_flags(overrides: Mapping[str, object]) -> list[str]:
    """{"stts.prune_ratio": 0.3} -> ["--config.stts.prune_ratio=0.3"]. Strings go verbatim (ml_collections
    parses them against the field's type); other values as Python literals, which it also parses."""
    return [f"--config.{key}={value if isinstance(value, str) else repr(value)}" for key, value in overrides.items()]


def train_command(
    config: str,
    overrides: Mapping[str, object],
    workdir: str,
    *,
    distributed: bool = False,
    python: str = sys.executable,
) -> list[str]:
    """The argv of `python -m stts_jax.train` for one run. `distributed` adds `--distributed` (every host of
    a pod runs this same command and jax.distributed finds the others); `python` is the interpreter."""
    argv = [python, "-m", "stts_jax.train", f"--config={config}", f"--workdir={workdir}"]
    return argv + (["--distributed"] if distributed else []) + override_flags(overrides)
