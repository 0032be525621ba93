"""Train on a Cloud TPU VM slice (or several, as multislice): pre-flight compile, optionally request the TPU as
a queued resource and wait until it is ACTIVE, ship the committed code through GCS, install it on every
worker, and start the same train command on all hosts, in the background.

  python -m launch.tpu_vm --name=NAME --zone=ZONE --accelerator=v5p-128 --config=configs/X.py:ARGS \
      --workdir=gs://BUCKET/RUN [--num_slices=2] [--create | --recreate] [--spot] [--dry-run] [--config.F=V ...]

NAME is the queued resource (Cloud TPU's recommended way to get capacity, and the only one for multislice);
its TPU VM slice is NAME too, or NAME-0, NAME-1, ... with --num_slices > 1. The training runs detached on
every worker (its output in ~/stts_jax_train.log there), so the launcher ends once it has started; it prints
how to follow the log and how to stop the training. Rerunning the same command resumes from the workdir.
"""

from __future__ import annotations

import argparse
import shlex
import sys
import tempfile
from collections.abc import Callable, Sequence

from launch.commands import (
    Followup,
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
# on each worker, in the home directory: a gs:// workdir cannot be appended to, so the log stays on the VM
LOG_FILE = "stts_jax_train.log"
PID_FILE = "stts_jax_train.pid"  # the running training's process id: a second start is refused, `stop` reads it
STARTUP_SECONDS = 30  # a training that exits within this (a bad flag, a missing package) fails the launch
# read and write GCS (code, data, checkpoints) with the VM's service account
SCOPES = "https://www.googleapis.com/auth/cloud-platform"
QUEUED_RESOURCES = ("gcloud", "compute", "tpus", "queued-resources")  # how the launcher gets and reaches TPUs
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


def train_script(run: Run, startup_seconds: int = STARTUP_SECONDS) -> str:
    """The shell command every worker runs: start the train command (with --distributed, from the code
    directory) detached from the ssh session (`setsid`, `nohup`, no terminal), its output appended to
    ~/LOG_FILE and its process id in ~/PID_FILE, so that the session can end. Refused while an earlier
    training runs there; if the training exits within `startup_seconds`, its status and the log's end."""
    train = train_command(run.config, run.overrides, run.workdir, distributed=True, python=f"../{VENV_DIR}/bin/python")
    here = "$(hostname):"
    statements = [
        f'if [ -f {PID_FILE} ] && kill -0 "$(cat {PID_FILE})" 2>/dev/null; then '
        f'echo "{here} a training already runs here (pid $(cat {PID_FILE})); stop it first" >&2; exit 1; fi',
        f"cd {CODE_DIR} || exit 1",
        f"nohup setsid {shlex.join(train)} >> ../{LOG_FILE} 2>&1 < /dev/null & pid=$!",
        f"echo $pid > ../{PID_FILE}",
        f"sleep {startup_seconds}",
        f"if ! kill -0 $pid 2>/dev/null; then wait $pid; status=$?; "
        f'echo "{here} the training exited with status $status; the end of ~/{LOG_FILE}:" >&2; '
        f"tail -n 30 ../{LOG_FILE} >&2; exit $status; fi",
        f'echo "{here} training in the background (pid $pid), its output in ~/{LOG_FILE}"',
    ]
    return "; ".join(statements)


def stop_script() -> str:
    """The shell command that stops a worker's training: SIGTERM, on which it saves a checkpoint and exits."""
    return f'kill -TERM "$(cat {PID_FILE})"'


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
    """The steps of a TPU VM launch, pre-flight first. `create` requests the TPU as the queued resource `name`
    and waits until it is ACTIVE; `recreate` deletes it first, as a preempted spot TPU needs."""
    check_name(name, "--name", 63)
    if not zone:
        raise LaunchError("--zone is empty: pass the TPU's zone, e.g. --zone=us-east5-a.")
    if create and recreate:
        raise LaunchError("--create and --recreate together: --recreate already creates; pass one of them.")
    gcloud_flags = [f"--zone={zone}"] + ([f"--project={project}"] if project else [])
    tpus = QUEUED_RESOURCES
    version = runtime_version or run.accelerator.runtime_version
    steps = [preflight_step(run)]

    if recreate:
        steps.append(
            Step(
                f"delete the queued resource {name} with its TPU (a preempted spot TPU cannot be restarted)",
                # --force: a queued resource is deleted with its slices only when forced
                (*tpus, "delete", name, *gcloud_flags, "--force", "--quiet"),
                f"If {name} does not exist, run again with --create instead of --recreate.",
            )
        )
    if create or recreate:
        if run.num_slices > 1:
            what = f"{run.num_slices} slices of {run.accelerator.name}"
            nodes = [f"--node-count={run.num_slices}", f"--node-prefix={name}"]
        else:
            what, nodes = f"a slice of {run.accelerator.name}", [f"--node-id={name}"]
        steps.append(
            Step(
                f"request {what} as the queued resource {name}",
                (
                    *tpus,
                    "create",
                    name,
                    *gcloud_flags,
                    f"--accelerator-type={run.accelerator.name}",
                    f"--runtime-version={version}",
                    *nodes,
                    f"--scopes={SCOPES}",
                    *(["--spot"] if spot else []),
                ),
                "Check quota and the zone's TPU types (gcloud compute tpus accelerator-types list --zone=ZONE); "
                f"if the queued resource {name} already exists, drop --create (or use --recreate).",
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
    ssh = (*tpus, "ssh", name, *gcloud_flags, "--node=all", "--worker=all")
    steps += [
        Step(
            f"on every worker: fetch the code, install it with jax[tpu] (Python {python_version()}, via uv)",
            (*ssh, f"--command={setup_script(code_url)}"),
            "Read the worker's error above; the TPU is left as it is, so fix and run again without --create.",
        ),
        Step(
            f"on every worker: start the training in the background ({run.hosts} processes joined by "
            f"jax.distributed; resumes from the workdir), its output in ~/{LOG_FILE}",
            (*ssh, f"--command={train_script(run)}"),
            f"Read the worker's message above. A training that is still running must be stopped first (the stop "
            f"command of a dry run); then run the same command again (without --create) to resume from the latest "
            f"checkpoint in {run.workdir}. After a spot preemption use --recreate.",
        ),
    ]
    return steps


def followups(run: Run, *, name: str, zone: str, project: str | None = None) -> list[Followup]:
    """How to follow the training that the plan leaves running, collect its logs, and stop it."""
    ssh = (*QUEUED_RESOURCES, "ssh", name, f"--zone={zone}", *([f"--project={project}"] if project else []))
    logs = f"{run.workdir}/logs"
    return [
        Followup(
            "follow the training on the first worker (Ctrl-C stops following, not the training)",
            (*ssh, "--node=0", "--worker=0", f"--command=tail -n 100 -F {LOG_FILE}"),
        ),
        Followup(
            f"copy every worker's log to {logs}/HOSTNAME.log",
            (*ssh, "--node=all", "--worker=all", f'--command=gcloud storage cp {LOG_FILE} {logs}/"$(hostname)".log'),
        ),
        Followup(
            "stop the training on every worker: each saves a checkpoint and exits; the same launch command resumes it",
            (*ssh, "--node=all", "--worker=all", f"--command={stop_script()}"),
        ),
    ]


def main(argv: Sequence[str] | None = None, run_command: Callable[[Sequence[str]], int] = run_in_repo) -> int:
    parser = run_parser(__spec__.name, __doc__.split("\n\n")[0])
    parser.add_argument("--name", required=True, help="the queued resource, and its TPU VM (NAME-0, ... if several)")
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

    def build_followups(args: argparse.Namespace, run: Run) -> list[Followup]:
        return followups(run, name=args.name, zone=args.zone, project=args.project)

    return main_with(parser, build, argv, run_command, build_followups)


if __name__ == "__main__":
    sys.exit(main())
