"""Train on a Cloud TPU VM slice (or several, as multislice): pre-flight compile, optionally create the TPU,
ship the committed code through GCS, install it on every worker, and run the same train command on all hosts.

  python -m launch.tpu_vm --name=NAME --zone=ZONE --accelerator=v5p-128 --config=configs/X.py:ARGS \
      --workdir=gs://BUCKET/RUN [--num_slices=2] [--create | --recreate] [--spot] [--dry-run] [--config.F=V ...]

Multislice needs queued resources, so with --num_slices > 1 NAME is a queued resource whose slices are
NAME-0, NAME-1, ...; one slice is a plain TPU VM. Rerunning the same command resumes from the workdir.
"""

from __future__ import annotations

import argparse
import shlex
import sys
import tempfile
from collections.abc import Callable, Sequence

from launch.commands import (
    LaunchError,
    Run,
    Step,
    check_name,
    main_with,
    preflight_step,
    python_version,
    run_in_repo,
    run_parser,
    tpu_requirements,
)
from stts_jax.train.command import train_command

CODE_DIR = "stts_jax"  # on each worker, in the home directory where `gcloud ... ssh --command` starts
VENV_DIR = "stts_jax_venv"  # beside CODE_DIR, so shipping new code keeps the installed packages
CODE_ARCHIVE = "stts_jax.tar.gz"
# read and write GCS (code, data, checkpoints) with the VM's service account
SCOPES = "https://www.googleapis.com/auth/cloud-platform"
# queued-resource states from which ACTIVE will not follow
_DEAD_STATES = "FAILED|SUSPENDING|SUSPENDED|DELETING"


def setup_script(code_url: str) -> str:
    """The shell command each worker runs to replace its copy of the code and install it."""
    commands = [
        ["rm", "-rf", CODE_DIR, CODE_ARCHIVE],
        ["gcloud", "storage", "cp", code_url, CODE_ARCHIVE],
        ["mkdir", CODE_DIR],
        ["tar", "-xzf", CODE_ARCHIVE, "-C", CODE_DIR],
        # The TPU images' system Python is older than the package needs; uv installs this machine's version.
        # The variable lets pip install into the user site on images whose Python is marked externally
        # managed; older pips ignore it.
        ["PIP_BREAK_SYSTEM_PACKAGES=1", "python3", "-m", "pip", "install", "--user", "--quiet", "uv"],
        [".local/bin/uv", "venv", "--quiet", "--allow-existing", f"--python={python_version()}", VENV_DIR],
        [".local/bin/uv", "pip", "install", "--quiet", f"--python={VENV_DIR}/bin/python", "-e", f"./{CODE_DIR}"]
        + tpu_requirements(),
    ]
    return " && ".join(shlex.join(command) for command in commands)


def train_script(run: Run) -> str:
    """The shell command every worker runs: the train command with --distributed, from the code directory.
    `exec` makes Python the process that receives SIGTERM (and saves a checkpoint) on preemption."""
    train = train_command(run.config, run.overrides, run.workdir, distributed=True, python=f"../{VENV_DIR}/bin/python")
    return f"{shlex.join(['cd', CODE_DIR])} && exec {shlex.join(train)}"


def plan(
    run: Run,
    *,
    name: str,
    zone: str,
    project: str | None = None,
    create: bool = False,
    recreate: bool = False,
    spot: bool = False,
    runtime_version: str | None = None,
    code_ref: str = "HEAD",
) -> list[Step]:
    """The steps of a TPU VM launch, pre-flight first. `create` makes the TPU (a queued resource when
    run.num_slices > 1); `recreate` deletes it first, as a preempted spot TPU needs."""
    check_name(name, "--name", 63)
    if not zone:
        raise LaunchError("--zone is empty: pass the TPU's zone, e.g. --zone=us-east5-a.")
    if create and recreate:
        raise LaunchError("--create and --recreate together: --recreate already creates; pass one of them.")
    gcloud_flags = [f"--zone={zone}"] + ([f"--project={project}"] if project else [])
    multislice = run.num_slices > 1
    kind = ["queued-resources"] if multislice else ["tpu-vm"]
    tpus = ["gcloud", "compute", "tpus", *kind]
    version = runtime_version or run.accelerator.runtime_version
    steps = [preflight_step(run)]

    if recreate:
        force = ["--force"] if multislice else []  # a queued resource is deleted with its slices only when forced
        steps.append(
            Step(
                f"delete the TPU {name} (a preempted spot TPU cannot be restarted)",
                (*tpus, "delete", name, *gcloud_flags, *force, "--quiet"),
                f"If {name} does not exist, run again with --create instead of --recreate.",
            )
        )
    if create or recreate:
        spot_flag = ["--spot"] if spot else []
        if multislice:
            steps.append(
                Step(
                    f"request {run.num_slices} slices of {run.accelerator.name} as the queued resource {name}",
                    (
                        *tpus,
                        "create",
                        name,
                        *gcloud_flags,
                        f"--accelerator-type={run.accelerator.name}",
                        f"--runtime-version={version}",
                        f"--node-count={run.num_slices}",
                        f"--node-prefix={name}",
                        f"--scopes={SCOPES}",
                        *spot_flag,
                    ),
                    "Check quota and the zone's TPU types (gcloud compute tpus accelerator-types list --zone=ZONE).",
                )
            )
            describe = shlex.join([*tpus, "describe", name, *gcloud_flags, "--format=value(state.state)"])
            wait = (
                f"while true; do state=$({describe}) || exit 1; echo {name}: $state; "
                f'case "$state" in ACTIVE) exit 0;; {_DEAD_STATES}) exit 1;; esac; sleep 60; done'
            )
            steps.append(
                Step(
                    f"wait until the queued resource {name} is ACTIVE (it waits for capacity first)",
                    ("bash", "-c", wait),
                    "The request ended in the state printed above: run again with --recreate.",
                )
            )
        else:
            steps.append(
                Step(
                    f"create the TPU VM slice {name} ({run.accelerator.name})",
                    (
                        *tpus,
                        "create",
                        name,
                        *gcloud_flags,
                        f"--accelerator-type={run.accelerator.name}",
                        f"--version={version}",
                        f"--scopes={SCOPES}",
                        *spot_flag,
                    ),
                    "Check quota and the zone's TPU types (gcloud compute tpus accelerator-types list --zone=ZONE); "
                    f"if {name} already exists, drop --create.",
                )
            )

    archive = f"{tempfile.gettempdir()}/stts_jax-{name}.tar.gz"
    code_url = f"{run.workdir}/code.tar.gz"
    steps += [
        Step(
            f"pack the committed tree at {code_ref} (uncommitted changes are not shipped)",
            ("git", "archive", "--format=tar.gz", f"--output={archive}", code_ref),
            "Run the launcher from a clone of the repository, with --code_ref naming an existing commit.",
        ),
        Step(
            "upload it beside the run's checkpoints, where every worker can read it",
            ("gcloud", "storage", "cp", archive, code_url, *([f"--project={project}"] if project else [])),
            f"Check that the bucket of {run.workdir} exists and that you can write to it.",
        ),
    ]
    workers = ["--node=all", "--worker=all"] if multislice else ["--worker=all"]
    ssh = (*tpus, "ssh", name, *gcloud_flags, *workers)
    steps += [
        Step(
            f"on every worker: fetch the code, install it with jax[tpu] (Python {python_version()}, via uv)",
            (*ssh, f"--command={setup_script(code_url)}"),
            "Read the worker's error above; the TPU is left as it is, so fix and run again without --create.",
        ),
        Step(
            f"on every worker: train ({run.hosts} processes joined by jax.distributed; resumes from the workdir)",
            (*ssh, f"--command={train_script(run)}"),
            f"Run the same command again (without --create) to resume from the latest checkpoint in {run.workdir}; "
            "after a spot preemption use --recreate.",
        ),
    ]
    return steps


def main(argv: Sequence[str] | None = None, run_command: Callable[[Sequence[str]], int] = run_in_repo) -> int:
    parser = run_parser(__spec__.name, __doc__.split("\n\n")[0])
    parser.add_argument("--name", required=True, help="TPU VM name (queued resource name with --num_slices > 1)")
    parser.add_argument("--zone", required=True, help="the TPU's zone, e.g. us-east5-a")
    parser.add_argument("--project", help="Google Cloud project (default: gcloud's configured project)")
    creation = parser.add_mutually_exclusive_group()
    creation.add_argument("--create", action="store_true", help="create the TPU first")
    creation.add_argument("--recreate", action="store_true", help="delete the TPU, then create it (after preemption)")
    parser.add_argument("--spot", action="store_true", help="create spot (preemptible) capacity")
    parser.add_argument("--runtime_version", "--runtime-version", help="TPU VM software version (default per chip)")
    parser.add_argument("--code_ref", "--code-ref", default="HEAD", help="git commit to ship (default HEAD)")

    def build(args: argparse.Namespace, run: Run) -> list[Step]:
        return plan(
            run,
            name=args.name,
            zone=args.zone,
            project=args.project,
            create=args.create,
            recreate=args.recreate,
            spot=args.spot,
            runtime_version=args.runtime_version,
            code_ref=args.code_ref,
        )

    return main_with(parser, build, argv, run_command)


if __name__ == "__main__":
    sys.exit(main())
