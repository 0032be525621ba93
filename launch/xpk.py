"""Train on TPU slices of a GKE cluster through xpk: pre-flight compile, then one `xpk workload create`
whose every pod runs the same train command with --distributed.

  python -m launch.xpk --cluster=CLUSTER --workload=NAME --accelerator=v5p-128 --config=configs/X.py:ARGS \
      --workdir=gs://BUCKET/RUN [--num_slices=2] [--docker_image=IMAGE] [--dry-run] [--config.F=V ...]

Without --docker_image, xpk builds an image from --base_docker_image and the committed tree, and each pod
installs the package before training. JobSet restarts the workload after a failure or preemption (up to
--max_restarts times); each restart resumes from the workdir.
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


def container_command(run: Run, install: bool) -> str:
    """The shell command every pod runs, from the image's working directory (the repository root).
    `exec` makes Python the process xpk forwards SIGTERM to, so preemption saves a checkpoint."""
    train = shlex.join(train_command(run.config, run.overrides, run.workdir, distributed=True, python="python"))
    if not install:
        return f"exec {train}"
    return f"{shlex.join(['pip', 'install', '--quiet', '-e', '.', *tpu_requirements()])} && exec {train}"


def plan(
    run: Run,
    *,
    cluster: str,
    workload: str,
    project: str | None = None,
    zone: str | None = None,
    docker_image: str | None = None,
    base_docker_image: str | None = None,
    max_restarts: int = 10,
    grace_period_seconds: int = 300,
    code_ref: str = "HEAD",
) -> list[Step]:
    """The steps of an xpk launch, pre-flight first. `docker_image` is an image with the package and jax[tpu]
    installed and the repository as its working directory; without it xpk layers the committed tree at
    `code_ref` onto `base_docker_image` (default: python of this machine's version)."""
    check_name(workload, "--workload", 40)  # xpk's own limit
    check_name(cluster, "--cluster", 40)
    if max_restarts < 0:
        raise LaunchError(f"--max_restarts={max_restarts}: pass 0 (never restart) or more.")
    if grace_period_seconds < 1:
        raise LaunchError(f"--grace_period_seconds={grace_period_seconds}: pass a positive number of seconds.")
    if docker_image and base_docker_image:
        raise LaunchError("--docker_image and --base_docker_image together: pass one (see --help).")
    where = [f"--project={project}"] if project else []
    where += [f"--zone={zone}"] if zone else []
    steps = [preflight_step(run)]
    if docker_image:
        image = [f"--docker-image={docker_image}"]
    else:
        script_dir = f"{tempfile.gettempdir()}/stts_jax-{workload}"
        export = (
            f"set -euo pipefail; rm -rf {shlex.quote(script_dir)}; mkdir -p {shlex.quote(script_dir)}; "
            f"git archive {shlex.quote(code_ref)} | tar -x -C {shlex.quote(script_dir)}"
        )
        steps.append(
            Step(
                f"export the committed tree at {code_ref} for the image (uncommitted changes are not shipped)",
                ("bash", "-c", export),
                "Run the launcher from a clone of the repository, with --code_ref naming an existing commit.",
            )
        )
        image = [
            f"--base-docker-image={base_docker_image or f'python:{python_version()}'}",
            f"--script-dir={script_dir}",
        ]
    steps.append(
        Step(
            f"create the workload {workload}: {run.num_slices} x {run.accelerator.name}, {run.hosts} pods",
            (
                "xpk",
                "workload",
                "create",
                f"--cluster={cluster}",
                f"--workload={workload}",
                f"--tpu-type={run.accelerator.name}",
                f"--num-slices={run.num_slices}",
                *where,
                *image,
                f"--max-restarts={max_restarts}",
                # time between SIGTERM and SIGKILL: the training saves a checkpoint in it
                f"--termination-grace-period-seconds={grace_period_seconds}",
                f"--command={container_command(run, install=not docker_image)}",
            ),
            "Read xpk's message above (cluster name and zone, the cluster's TPU type, docker login); nothing "
            "else was changed. A workload of the same name must be deleted first (xpk workload delete).",
        )
    )
    return steps


def main(argv: Sequence[str] | None = None, run_command: Callable[[Sequence[str]], int] = run_in_repo) -> int:
    parser = run_parser(__spec__.name, __doc__.split("\n\n")[0])
    parser.add_argument("--cluster", required=True, help="the xpk (GKE) cluster with TPU node pools of this type")
    parser.add_argument("--workload", required=True, help="workload name, at most 40 characters")
    parser.add_argument("--project", help="Google Cloud project (default: gcloud's configured project)")
    parser.add_argument("--zone", help="the cluster's zone (default: gcloud's configured zone)")
    image = parser.add_mutually_exclusive_group()
    image.add_argument("--docker_image", "--docker-image", help="a prebuilt image with the package installed")
    image.add_argument(
        "--base_docker_image", "--base-docker-image", help=f"base for xpk's image (default python:{python_version()})"
    )
    parser.add_argument("--max_restarts", "--max-restarts", type=int, default=10, help="JobSet restarts (default 10)")
    parser.add_argument(
        "--grace_period_seconds",
        "--grace-period-seconds",
        type=int,
        default=300,
        help="seconds from SIGTERM to SIGKILL, for the checkpoint (default 300)",
    )
    parser.add_argument("--code_ref", "--code-ref", default="HEAD", help="git commit to ship (default HEAD)")

    def build(args: argparse.Namespace, run: Run) -> list[Step]:
        return plan(
            run,
            cluster=args.cluster,
            workload=args.workload,
            project=args.project,
            zone=args.zone,
            docker_image=args.docker_image,
            base_docker_image=args.base_docker_image,
            max_restarts=args.max_restarts,
            grace_period_seconds=args.grace_period_seconds,
            code_ref=args.code_ref,
        )

    return main_with(parser, build, argv, run_command)


if __name__ == "__main__":
    sys.exit(main())
