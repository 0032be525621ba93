"""Pod launch plans: the dry-run output is the exact command list (pre-flight compile first, the same train
command with --distributed on every host, overrides quoted so that they survive the shell), failed steps stop
the launch, and bad input is refused with the fix. Nothing here calls gcloud, xpk or the AOT compiler."""

from __future__ import annotations

import io
import re
import shlex
import sys
import tempfile

import pytest

from launch import tpu_vm, xpk
from launch.commands import (
    REPO_ROOT,
    LaunchError,
    StepFailed,
    execute,
    make_run,
    parse_accelerator,
)
from stts_jax.train.command import train_command

GCS_DATA = "--config.data.data_dir=gs://my-bucket/tfds"
TRICKY = {"data.data_dir": "gs://my-bucket/Bob's data, v2", "stts.method": "stts", "stts.prune_ratio": 0.3}
TMP = tempfile.gettempdir()
TPU_VM = ["--name=stts-v5p", "--zone=us-east5-a", "--workdir=gs://my-bucket/stts/run1"]
XPK = ["--cluster=tpu-cluster", "--workload=stts-run1", "--workdir=gs://my-bucket/stts/run1"]


def never_run(argv):
    raise AssertionError(f"a dry run ran {argv}")


def dry_run(main, argv, capsys) -> list[list[str]]:
    """The commands a dry run prints, each split back into its argv as a shell would."""
    assert main([*argv, "--dry-run"], run_command=never_run) == 0
    lines = capsys.readouterr().out.splitlines()
    return [shlex.split(line) for line in lines if line and not line.startswith("#")]


def remote(command: list[str]) -> list[str]:
    """The argv of the last command a `--command=...` value runs on the workers."""
    (value,) = [arg.removeprefix("--command=") for arg in command if arg.startswith("--command=")]
    words = shlex.split(value)
    last = len(words) - words[::-1].index("&&")
    assert words[last] == "exec"
    return words[last + 1 :]


def test_train_command_round_trips_through_the_shell():
    argv = train_command("configs/synthetic.py:variant=tiny,frames=8", TRICKY, "gs://b/run dir", distributed=True)
    assert argv == [
        sys.executable,
        "-m",
        "stts_jax.train",
        "--config=configs/synthetic.py:variant=tiny,frames=8",
        "--workdir=gs://b/run dir",
        "--distributed",
        "--config.data.data_dir=gs://my-bucket/Bob's data, v2",
        "--config.stts.method=stts",
        "--config.stts.prune_ratio=0.3",
    ]
    assert shlex.split(shlex.join(argv)) == argv
    assert "--distributed" not in train_command("configs/synthetic.py", {}, "/tmp/run")


def test_tpu_vm_dry_run_single_slice(capsys):
    commands = dry_run(
        tpu_vm.main,
        [*TPU_VM, "--accelerator=v5p-16", "--config=configs/synthetic.py:variant=tiny,frames=8", "--create", "--spot"]
        + [GCS_DATA, "--config.stts.prune_ratio=0.3"],
        capsys,
    )
    config = "--config=configs/synthetic.py:variant=tiny,frames=8"
    aot = [sys.executable, "-m", "stts_jax.aot", config, "--topology=v5p:2x2x2", "--num_slices=1"]
    assert commands[0] == [*aot, GCS_DATA, "--config.stts.prune_ratio=0.3"]
    assert (
        commands[1]
        == (
            "gcloud compute tpus tpu-vm create stts-v5p --zone=us-east5-a --accelerator-type=v5p-16 "
            "--version=v2-alpha-tpuv5 --scopes=https://www.googleapis.com/auth/cloud-platform --spot"
        ).split()
    )
    archive = f"{TMP}/stts_jax-stts-v5p.tar.gz"
    assert commands[2] == ["git", "archive", "--format=tar.gz", f"--output={archive}", "HEAD"]
    assert commands[3] == ["gcloud", "storage", "cp", archive, "gs://my-bucket/stts/run1/code.tar.gz"]
    ssh = "gcloud compute tpus tpu-vm ssh stts-v5p --zone=us-east5-a --worker=all".split()
    assert [c[: len(ssh)] for c in commands[4:]] == [ssh, ssh] and len(commands) == 6
    setup = commands[4][-1]
    assert "gcloud storage cp gs://my-bucket/stts/run1/code.tar.gz" in setup and "'jax[tpu]==" in setup
    assert remote(commands[5]) == train_command(
        "configs/synthetic.py:variant=tiny,frames=8",
        {"data.data_dir": "gs://my-bucket/tfds", "stts.prune_ratio": "0.3"},
        "gs://my-bucket/stts/run1",
        distributed=True,
        python="../stts_jax_venv/bin/python",
    )


def test_tpu_vm_overrides_with_spaces_and_commas_survive_two_shells():
    run = make_run("configs/synthetic.py:variant=tiny,frames=8", "gs://my-bucket/run", TRICKY, "v6e-16")
    steps = tpu_vm.plan(run, name="stts-v6e", zone="us-east1-d")
    printed = shlex.split(shlex.join(steps[-1].argv))  # the local shell, then the worker's
    python = "../stts_jax_venv/bin/python"
    assert remote(printed) == train_command(run.config, TRICKY, run.workdir, distributed=True, python=python)
    assert shlex.split(shlex.join(steps[0].argv))[-3:] == [
        "--config.data.data_dir=gs://my-bucket/Bob's data, v2",
        "--config.stts.method=stts",
        "--config.stts.prune_ratio=0.3",
    ]


def test_tpu_vm_dry_run_multislice(capsys):
    commands = dry_run(
        tpu_vm.main,
        [*TPU_VM, "--accelerator=v5p-128", "--num_slices=2", "--config=configs/synthetic.py", "--recreate", GCS_DATA],
        capsys,
    )
    assert commands[0][3:6] == ["--config=configs/synthetic.py", "--topology=v5p:4x4x4", "--num_slices=2"]
    zone = "--zone=us-east5-a"
    qr = ["gcloud", "compute", "tpus", "queued-resources"]
    assert commands[1] == [*qr, "delete", "stts-v5p", zone, "--force", "--quiet"]
    assert commands[2] == [*qr, "create", "stts-v5p", zone, "--accelerator-type=v5p-128"] + [
        "--runtime-version=v2-alpha-tpuv5",
        "--node-count=2",
        "--node-prefix=stts-v5p",
        "--scopes=https://www.googleapis.com/auth/cloud-platform",
    ]
    assert commands[3][:2] == ["bash", "-c"] and "ACTIVE) exit 0" in commands[3][2]
    for command in commands[-2:]:
        assert command[:9] == [*qr, "ssh", "stts-v5p", zone, "--node=all", "--worker=all"]
    assert remote(commands[-1])[-2:] == ["--distributed", GCS_DATA]


def test_xpk_dry_run(capsys):
    commands = dry_run(
        xpk.main,
        [*XPK, "--accelerator=v6e-256", "--num-slices=4", "--config=configs/synthetic.py:frames=8", GCS_DATA],
        capsys,
    )
    assert commands[0][3:6] == ["--config=configs/synthetic.py:frames=8", "--topology=v6e:16x16", "--num_slices=4"]
    assert (
        commands[1][:2] == ["bash", "-c"] and f"git archive HEAD | tar -x -C {TMP}/stts_jax-stts-run1" in commands[1][2]
    )
    *create, command = commands[2]
    python = f"python:{sys.version_info.major}.{sys.version_info.minor}"
    assert (
        create
        == (
            "xpk workload create --cluster=tpu-cluster --workload=stts-run1 --tpu-type=v6e-256 --num-slices=4 "
            f"--base-docker-image={python} --script-dir={TMP}/stts_jax-stts-run1 --max-restarts=10 "
            "--termination-grace-period-seconds=300"
        ).split()
    )
    assert shlex.split(command)[:4] == ["--command=pip", "install", "--quiet", "-e"]
    assert remote([command]) == train_command(
        "configs/synthetic.py:frames=8",
        {"data.data_dir": "gs://my-bucket/tfds"},
        "gs://my-bucket/stts/run1",
        distributed=True,
        python="python",
    )


def test_xpk_prebuilt_image_runs_the_train_command_only():
    run = make_run("configs/synthetic.py", "gs://my-bucket/run", TRICKY, "v5litepod-16", num_slices=2)
    preflight, create = xpk.plan(run, cluster="c1", workload="w1", docker_image="gcr.io/p/stts:1", project="p")
    assert preflight.argv[4:6] == ("--topology=v5e:4x4", "--num_slices=2")
    assert "--docker-image=gcr.io/p/stts:1" in create.argv and "--project=p" in create.argv
    command = shlex.split(create.argv[-1].removeprefix("--command="))
    assert command == ["exec", *train_command(run.config, TRICKY, run.workdir, distributed=True, python="python")]


def test_execute_stops_at_a_failed_preflight():
    run = make_run("configs/synthetic.py", "gs://my-bucket/run", {}, "v5p-8")
    steps = tpu_vm.plan(run, name="stts-v5p", zone="us-east5-a", create=True)
    ran, out = [], io.StringIO()
    with pytest.raises(StepFailed, match="step 1 .* status 1. Nothing was created or started"):
        execute(steps, "header", dry_run=False, run_command=lambda argv: ran.append(argv) or 1, out=out)
    assert ran == [steps[0].argv] and f"+ {shlex.join(steps[0].argv)}" in out.getvalue()


def test_execute_runs_every_step_in_order(capsys):
    ran = []
    argv = [*TPU_VM, "--accelerator=v5p-8", "--config=configs/synthetic.py"]
    assert tpu_vm.main(argv, run_command=lambda a: ran.append(a) or 0) == 0
    assert [a[:3] for a in ran] == [
        (sys.executable, "-m", "stts_jax.aot"),
        ("git", "archive", "--format=tar.gz"),
        ("gcloud", "storage", "cp"),
        ("gcloud", "compute", "tpus"),
        ("gcloud", "compute", "tpus"),
    ]
    failed = []
    assert tpu_vm.main(argv, run_command=lambda a: failed.append(a) or (3 if a[0] == "git" else 0)) == 1
    assert len(failed) == 2 and "exited with status 3" in capsys.readouterr().err


def test_accelerators():
    assert (parse_accelerator("v5p-8").topology, parse_accelerator("v5p-8").hosts) == ("v5p:2x2x1", 1)
    assert (parse_accelerator("v5p-128").topology, parse_accelerator("v5p-128").hosts) == ("v5p:4x4x4", 16)
    assert (parse_accelerator("v6e-8").topology, parse_accelerator("v6e-8").hosts) == ("v6e:2x4", 1)
    assert (parse_accelerator("v6e-16").topology, parse_accelerator("v6e-16").hosts) == ("v6e:4x4", 4)
    assert parse_accelerator("v5litepod-64").runtime_version == "v2-alpha-tpuv5-lite"


@pytest.mark.parametrize(
    "args, message",
    [
        (["--accelerator=v5p-100"], "unknown accelerator type 'v5p-100'.*v5p-128"),
        (["--accelerator=v5e-16"], "v5litepod-N"),
        (["--accelerator=tpu"], "unknown accelerator type"),
        (["--num_slices=0"], "at least one slice"),
        (["--workdir=/tmp/run"], "gs://BUCKET/PATH"),
        (["--workdir=gs://my-bucket"], "gs://BUCKET/PATH"),
        (["--accelerator=v5p-16"], "data.data_dir='/tmp/stts_jax_data' is on local disk.*2 hosts"),
        (["--config.stts.prune_rato=0.3"], "--config.stts.prune_rato: no such field"),
        (["--config.stts.prune_ratio", "0.3"], "--config.FIELD=VALUE"),
        (["--config=configs/missing.py"], "no file"),
        (["--config=configs/synthetic.py:variant=tiny,colour=red"], "does not load: ConfigError: .*'colour=red'"),
        (["--config=/etc/hostname"], "outside the repository"),
        (["--name=Stts_v5p"], "--name 'Stts_v5p' is not a valid name"),
        (["--create", "--recreate"], "not allowed with argument"),
        (["--zone"], "expected one argument"),
    ],
)
def test_tpu_vm_bad_input(args, message, capsys):
    base = [*TPU_VM, "--accelerator=v5p-8", "--config=configs/synthetic.py"]
    replaced = {arg.partition("=")[0] for arg in args}
    argv = [arg for arg in base if arg.partition("=")[0] not in replaced] + args
    with pytest.raises(SystemExit) as exit_info:
        tpu_vm.main([*argv, "--dry-run"], run_command=never_run)
    assert exit_info.value.code == 2
    assert re.search(message, capsys.readouterr().err.replace("\n", " "))


@pytest.mark.parametrize(
    "args, message",
    [
        ([], "the following arguments are required: --config, --workdir, --accelerator, --cluster, --workload"),
        (XPK + ["--workload=" + "w" * 41], "at most 40"),
        (XPK + ["--max_restarts=-1"], "--max_restarts=-1"),
        (XPK + ["--docker_image=a", "--base_docker_image=b"], "not allowed with argument"),
    ],
)
def test_xpk_bad_input(args, message, capsys):
    argv = args + (["--accelerator=v5p-8", "--config=configs/synthetic.py"] if args else [])
    with pytest.raises(SystemExit):
        xpk.main(argv, run_command=never_run)
    assert message in capsys.readouterr().err.replace("\n", " ")


def test_make_run_refuses_what_a_pod_cannot_use():
    with pytest.raises(LaunchError, match="share no disk"):  # the synthetic config keeps its data in /tmp
        make_run("configs/synthetic.py", "gs://my-bucket/run", {}, "v6e-16")
    assert make_run("configs/synthetic.py", "gs://my-bucket/run", {}, "v6e-8").hosts == 1  # one host: local is fine


def test_every_launch_command_in_the_readme_dry_runs(capsys):
    readme = (REPO_ROOT / "launch" / "README.md").read_text()
    commands = [shlex.split(block.replace("\\\n", " ")) for block in re.findall(r"```bash\n(.*?)```", readme, re.S)]
    assert len(commands) >= 5
    for python, dash_m, module, *argv in commands:
        assert (python, dash_m, "--dry-run") == ("python", "-m", argv[-1])
        main = {"launch.tpu_vm": tpu_vm.main, "launch.xpk": xpk.main}[module]
        assert main(argv, run_command=never_run) == 0, capsys.readouterr().err
        assert capsys.readouterr().out.splitlines()[3].startswith(f"{sys.executable} -m stts_jax.aot ")
