"""The commands of a pod launch, built as argv lists without running anything, and the plumbing that prints
them (dry run) or runs them one after another, stopping at the first failure.

`stts_jax.train.command.train_command(config, overrides, workdir)` is the one place a train command line
is spelled; the TPU VM and xpk launchers (and sweeps) build on it. Every launch starts with `aot_command`:
the train step compiled on this machine for the target TPU topology, so a job that cannot compile or does
not fit in HBM stops before a slice is created or a workload is queued.
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib.metadata
import importlib.util
import pathlib
import re
import shlex
import subprocess
import sys
from collections.abc import Callable, Mapping, Sequence
from typing import TextIO

from stts_jax.train.command import override_flags
from stts_jax.train.experiment import load_config_file

REPO_ROOT = pathlib.Path(__file__).resolve().parent.parent
# a GCE / GKE resource name: lower-case letters, digits and dashes, starting with a letter
NAME_PATTERN = re.compile(r"[a-z]([-a-z0-9]*[a-z0-9])?")


class LaunchError(ValueError):
    """The launch cannot go ahead as asked; the message names the problem and the fix."""


class StepFailed(LaunchError):
    """A command of the plan exited non-zero; the steps after it did not run."""


@dataclasses.dataclass(frozen=True)
class _Family:
    topology_prefix: str  # as stts_jax.aot names the chip: "v5p", "v5e", "v6e"
    units_per_chip: int  # v5p accelerator types count TensorCores (2 per chip); v5e / v6e types count chips
    max_single_host_chips: int  # larger slices have 4 chips per TPU VM
    runtime_version: str  # the TPU VM image Google recommends for JAX on this chip
    shapes: Mapping[int, str]  # chips -> the slice shape gcloud gives that accelerator type


_PLANAR_SHAPES = {4: "2x2", 8: "2x4", 16: "4x4", 32: "4x8", 64: "8x8", 128: "8x16", 256: "16x16"}
_CUBE_SHAPES = {
    **{4: "2x2x1", 8: "2x2x2", 16: "2x2x4", 32: "2x4x4", 64: "4x4x4", 128: "4x4x8", 256: "4x8x8"},
    **{512: "8x8x8", 1024: "8x8x16", 2048: "8x16x16", 4096: "16x16x16", 6144: "16x16x24"},
}
_FAMILIES = {
    "v5p": _Family("v5p", 2, 4, "v2-alpha-tpuv5", _CUBE_SHAPES),
    "v5litepod": _Family("v5e", 1, 8, "v2-alpha-tpuv5-lite", _PLANAR_SHAPES),
    "v6e": _Family("v6e", 1, 8, "v2-alpha-tpuv6e", _PLANAR_SHAPES),
}


@dataclasses.dataclass(frozen=True)
class Accelerator:
    """One TPU slice type as gcloud and xpk name it, with what a launch needs to know about it."""

    name: str  # accelerator type, e.g. "v5p-128"
    topology: str  # the slice as `python -m stts_jax.aot --topology` names it, e.g. "v5p:4x4x4"
    hosts: int  # TPU VMs in one slice; each runs one training process
    runtime_version: str  # TPU VM software version (`gcloud ... --version`)


def known_accelerators() -> list[str]:
    """Every accelerator type `parse_accelerator` accepts, smallest first within a family."""
    return [f"{prefix}-{chips * f.units_per_chip}" for prefix, f in _FAMILIES.items() for chips in f.shapes]


def parse_accelerator(name: str) -> Accelerator:
    """ "v5p-128" -> Accelerator(topology "v5p:4x4x4", 16 hosts, ...); LaunchError for an unknown type."""
    prefix, _, count = name.partition("-")
    family = _FAMILIES.get(prefix)
    chips, remainder = divmod(int(count), family.units_per_chip) if family and count.isdigit() else (0, 0)
    if family is None or remainder or chips not in family.shapes:
        hint = " (gcloud and xpk call v5e slices v5litepod-N)" if prefix == "v5e" else ""
        raise LaunchError(
            f"unknown accelerator type {name!r}{hint}: use one of {', '.join(known_accelerators())} "
            "(v5p-N counts TensorCores, two per chip; v5litepod-N and v6e-N count chips)."
        )
    hosts = 1 if chips <= family.max_single_host_chips else chips // 4
    return Accelerator(name, f"{family.topology_prefix}:{family.shapes[chips]}", hosts, family.runtime_version)


@dataclasses.dataclass(frozen=True)
class Run:
    """One training run on a pod: what every host trains and where the run keeps its state."""

    config: str  # "configs/X.py[:ARGS]", relative to the repository root (the workers get the same tree)
    workdir: str  # gs://BUCKET/PATH: checkpoints and metrics, shared by all hosts, outlives the TPU
    overrides: Mapping[str, object]  # config field path -> value, e.g. {"stts.prune_ratio": 0.3}
    accelerator: Accelerator
    num_slices: int = 1

    @property
    def hosts(self) -> int:
        return self.accelerator.hosts * self.num_slices


def aot_command(run: Run) -> list[str]:
    """The pre-flight: compile the run's train step on this machine for its TPU topology (exits non-zero
    when it does not compile or does not fit in HBM)."""
    return [
        sys.executable,
        "-m",
        "stts_jax.aot",
        f"--config={run.config}",
        f"--topology={run.accelerator.topology}",
        f"--num_slices={run.num_slices}",
        *override_flags(run.overrides),
    ]


def tpu_requirements() -> list[str]:
    """What a TPU host installs beside the package: the jax this machine compiled the pre-flight with, with
    the libtpu that version pins, so the pod runs the program the pre-flight checked; and gcsfs, without
    which etils (used by TFDS and Orbax) cannot open gs:// paths when TensorFlow is not installed."""
    return [f"jax[tpu]=={importlib.metadata.version('jax')}", "gcsfs"]


def python_version() -> str:
    """This interpreter's "major.minor", the version the hosts install (the package needs >= 3.11)."""
    return f"{sys.version_info.major}.{sys.version_info.minor}"


def check_name(value: str, what: str, max_length: int) -> str:
    """`value` if it is a valid resource name of at most `max_length` characters, else LaunchError."""
    if not NAME_PATTERN.fullmatch(value) or len(value) > max_length:
        raise LaunchError(
            f"{what} {value!r} is not a valid name: use at most {max_length} lower-case letters, digits and "
            "dashes, starting with a letter and not ending with a dash."
        )
    return value


def _load_config(path: pathlib.Path, arg: str):
    return load_config_file(str(path), arg or None)


def _has_field(config, key: str) -> bool:
    node = config
    for part in key.split("."):
        if not hasattr(node, "keys") or part not in node:
            return False
        node = node[part]
    return True


def make_run(config: str, workdir: str, overrides: Mapping[str, object], accelerator: str, num_slices: int = 1) -> Run:
    """A validated Run. The config is loaded here so that a typo in a file name, an argument or an override
    fails on this machine, before anything is created; a multi-host run needs its data on GCS."""
    if num_slices < 1:
        raise LaunchError(f"--num_slices={num_slices}: a run needs at least one slice; pass --num_slices=1 or more.")
    acc = parse_accelerator(accelerator)
    if not re.fullmatch(r"gs://[a-z0-9][-a-z0-9_.]*[a-z0-9]/[^\s]+", workdir):
        raise LaunchError(
            f"--workdir={workdir!r} is not a folder on Google Cloud Storage. A pod run needs "
            "--workdir=gs://BUCKET/PATH: the hosts of a slice share no disk, and a TPU VM's disk is lost "
            "when it is preempted, so checkpoints there could not be resumed."
        )
    path_text, _, arg = config.partition(":")
    path = pathlib.Path(path_text).resolve()
    if not path.is_file():
        raise LaunchError(f"--config={config!r}: no file {path}; name a config file such as configs/synthetic.py.")
    if not path.is_relative_to(REPO_ROOT):
        raise LaunchError(
            f"--config={config!r}: {path} is outside the repository {REPO_ROOT}; the hosts get the committed "
            "repository, so put the config file under configs/ and commit it."
        )
    relative = path.relative_to(REPO_ROOT).as_posix() + (f":{arg}" if arg else "")
    try:
        loaded = _load_config(path, arg)
    except Exception as error:  # a config file runs arbitrary code; whatever it raises is bad input here
        raise LaunchError(f"--config={config!r} does not load: {type(error).__name__}: {error}") from error
    unknown = [key for key in overrides if not _has_field(loaded, key)]
    if unknown:
        raise LaunchError(
            f"{', '.join(f'--config.{key}' for key in unknown)}: no such field in {relative}; "
            "check the spelling against the config file."
        )
    data_dir = str(overrides.get("data.data_dir", loaded.data.data_dir if _has_field(loaded, "data.data_dir") else ""))
    if acc.hosts * num_slices > 1 and data_dir and not data_dir.startswith("gs://"):
        raise LaunchError(
            f"data.data_dir={data_dir!r} is on local disk, but the run spans {acc.hosts * num_slices} hosts that "
            "share no disk: put the TFDS dataset directory on GCS and pass --config.data.data_dir=gs://BUCKET/tfds."
        )
    return Run(relative, workdir, dict(overrides), acc, num_slices)


@dataclasses.dataclass(frozen=True)
class Step:
    """One command of a launch plan, run on this machine (remote work goes through gcloud or xpk)."""

    what: str  # what the step does, printed above it
    argv: tuple[str, ...]
    fix: str  # what to do when it fails


def preflight_step(run: Run) -> Step:
    """The AOT compile as the first step of every plan."""
    slices = f" x {run.num_slices} slices" if run.num_slices > 1 else ""
    return Step(
        f"pre-flight: compile the train step for {run.accelerator.topology}{slices} on this machine; "
        "stop here if it fails or does not fit in HBM",
        tuple(aot_command(run)),
        "Nothing was created or started. The train step does not compile or does not fit in HBM on "
        f"{run.accelerator.topology}: read the memory table above, then change the mesh, batch size or remat "
        "policy (--config.FIELD=VALUE) or pick a larger slice.",
    )


FOLLOWUPS_HEADER = "# afterwards, by hand (the launcher runs none of these):"


@dataclasses.dataclass(frozen=True)
class Followup:
    """A command for after the launch (follow the training, stop it): printed with the plan, never run by it."""

    what: str
    argv: tuple[str, ...]


def describe(run: Run) -> str:
    """The header of a printed plan: what runs where."""
    acc = run.accelerator
    return (
        f"{acc.name} x {run.num_slices} slice(s): TPU {acc.topology}, {acc.hosts} host(s) per slice; all "
        f"{run.hosts} hosts run the same train command with --distributed. Local commands run in {REPO_ROOT}."
    )


def format_plan(steps: Sequence[Step], header: str) -> str:
    """The plan as a shell script: '#' comments and one shell-quoted, copy-pastable command per step."""
    lines = [f"# {header}"]
    for number, step in enumerate(steps, 1):
        lines += ["", f"# {number}. {step.what}", shlex.join(step.argv)]
    return "\n".join(lines) + "\n"


def format_followups(followups: Sequence[Followup]) -> str:
    """The commands for after the launch, in the plan's format, under a header that says they are not run."""
    if not followups:
        return ""
    lines = ["", FOLLOWUPS_HEADER]
    for followup in followups:
        lines += [f"# {followup.what}", shlex.join(followup.argv)]
    return "\n".join(lines) + "\n"


def run_in_repo(argv: Sequence[str]) -> int:
    """Runs `argv` in the repository root, its output going to this terminal; returns the exit status."""
    return subprocess.run(argv, cwd=REPO_ROOT).returncode


def execute(
    steps: Sequence[Step],
    header: str,
    *,
    dry_run: bool,
    run_command: Callable[[Sequence[str]], int] = run_in_repo,
    out: TextIO | None = None,
    followups: Sequence[Followup] = (),
) -> None:
    """Prints the plan (dry run) or runs its steps in order with `run_command` (argv -> exit status),
    raising StepFailed at the first that fails; then the `followups`. `out` defaults to the sys.stdout of
    the call."""
    out = out or sys.stdout
    if dry_run:
        out.write(format_plan(steps, f"dry run, nothing is executed. {header}") + format_followups(followups))
        return
    out.write(f"# {header}\n")
    for number, step in enumerate(steps, 1):
        out.write(f"\n# {number}/{len(steps)}. {step.what}\n+ {shlex.join(step.argv)}\n")
        out.flush()  # before the child writes to the same terminal
        status = run_command(step.argv)
        if status != 0:
            raise StepFailed(f"step {number} ({step.what}) exited with status {status}. {step.fix}")
    out.write(format_followups(followups))


def run_parser(module: str, description: str) -> argparse.ArgumentParser:
    """An argument parser for `python -m module` with the flags every launcher shares; overrides
    (--config.FIELD=VALUE) pass through."""
    parser = argparse.ArgumentParser(
        prog=f"python -m {module}",
        description=description,
        allow_abbrev=False,
        epilog="Any --config.FIELD=VALUE after the flags overrides a config field, as for python -m stts_jax.train.",
    )
    parser.add_argument("--config", required=True, help="config file and argument, e.g. configs/synthetic.py:frames=8")
    parser.add_argument("--workdir", required=True, help="gs://BUCKET/PATH for checkpoints and metrics (resumed)")
    parser.add_argument("--accelerator", required=True, help="TPU type of one slice, e.g. v5p-128, v6e-16")
    parser.add_argument("--num_slices", "--num-slices", type=int, default=1, help="slices joined over DCN")
    parser.add_argument(
        "--dry_run", "--dry-run", action="store_true", help="print every command (pre-flight included); run none"
    )
    return parser


def parse_overrides(extra: Sequence[str]) -> dict[str, str]:
    """["--config.stts.prune_ratio=0.3"] -> {"stts.prune_ratio": "0.3"}; LaunchError for anything else."""
    overrides = {}
    for arg in extra:
        match = re.fullmatch(r"--config\.([A-Za-z_][\w.]*)=(.*)", arg, flags=re.DOTALL)
        if match is None:
            raise LaunchError(
                f"unrecognised argument {arg!r}: config overrides are written --config.FIELD=VALUE (one argument, "
                "with '='); see --help for the launcher's own flags."
            )
        overrides[match[1]] = match[2]
    return overrides


def main_with(
    parser: argparse.ArgumentParser,
    build_plan: Callable[[argparse.Namespace, Run], list[Step]],
    argv: Sequence[str] | None,
    run_command: Callable[[Sequence[str]], int] = run_in_repo,
    build_followups: Callable[[argparse.Namespace, Run], list[Followup]] | None = None,
) -> int:
    """Parses `argv`, builds the plan (and the commands for afterwards) and prints or runs it; bad input
    exits 2 with the parser's usage, a failed step returns 1."""
    args, extra = parser.parse_known_args(argv)
    try:
        run = make_run(args.config, args.workdir, parse_overrides(extra), args.accelerator, args.num_slices)
        steps = build_plan(args, run)
        followups = build_followups(args, run) if build_followups else []
    except LaunchError as error:
        parser.error(str(error))
    try:
        execute(steps, describe(run), dry_run=args.dry_run, run_command=run_command, followups=followups)
    except StepFailed as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    return 0
