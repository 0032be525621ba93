"""Pod launch plans: the dry-run output is the exact command list (pre-flight compile first, the same train
command with --distributed on every host, overrides quoted so that they survive the shell), failed steps stop
the launch, and bad input is refused with the fix. Nothing here calls gcloud, xpk or the AOT compiler."""

from __future__ import annotations

import contextlib
import io
import os
import re
import shlex
import signal
import subprocess
import sys
import tempfile
import time

import pytest

from launch import tpu_vm, xpk
from launch.commands import (
    FOLLOWUPS_HEADER,
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


def dry_run(main, argv, capsys) -> tuple[list[list[str]], list[list[str]]]:
    """The commands a dry run prints, each split back into its argv as a shell would: (the plan's steps, the
    commands it prints for afterwards)."""
    assert main([*argv, "--dry-run"], run_command=never_run) == 0
    plan, _, afterwards = capsys.readouterr().out.partition(FOLLOWUPS_HEADER)
    split = lambda text: [shlex.split(line) for line in text.splitlines() if line and not line.startswith("#")]
    return split(plan), split(afterwards)


def remote(command: list[str]) -> list[str]:
    """The argv of the training that a `--command=...` value starts on the workers: in the background (after
    `nohup setsid`, before its output is appended to the log), or, for xpk, after the last `&& exec`."""
    (value,) = [arg.removeprefix("--command=") for arg in command if arg.startswith("--command=")]
    words = shlex.split(value)
    if "setsid" in words:
        start = words.index("setsid") + 1
        assert words[start - 2 : start] == ["nohup", "setsid"] and words[words.index(">>") :][:3] == [
            ">>",
            f"../{tpu_vm.LOG_FILE}",
            "2>&1",
        ]
        return words[start : words.index(">>")]
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
    commands, afterwards = dry_run(
        tpu_vm.main,
        [*TPU_VM, "--accelerator=v5p-16", "--config=configs/synthetic.py:variant=tiny,frames=8", "--create", "--spot"]
        + [GCS_DATA, "--config.stts.prune_ratio=0.3"],
        capsys,
    )
    config = "--config=configs/synthetic.py:variant=tiny,frames=8"
    aot = [sys.executable, "-m", "stts_jax.aot", config, "--topology=v5p:2x2x2", "--num_slices=1"]
    assert commands[0] == [*aot, GCS_DATA, "--config.stts.prune_ratio=0.3"]
    qr = "gcloud compute tpus queued-resources".split()
    assert (
        commands[1]
        == [*qr, "create", "stts-v5p"]
        + (
            "--zone=us-east5-a --accelerator-type=v5p-16 --runtime-version=v2-alpha-tpuv5 --node-id=stts-v5p "
            "--scopes=https://www.googleapis.com/auth/cloud-platform --spot"
        ).split()
    )
    assert commands[2][:2] == ["bash", "-c"]  # polls the request until it is provisioned
    assert f"{shlex.join([*qr, 'describe', 'stts-v5p', '--zone=us-east5-a'])} " in commands[2][2]
    assert "ACTIVE) exit 0;; FAILED|" in commands[2][2]
    archive = f"{TMP}/stts_jax-stts-v5p.tar.gz"
    assert commands[3] == ["git", "archive", "--format=tar.gz", f"--output={archive}", "HEAD"]
    assert commands[4] == ["gcloud", "storage", "cp", archive, "gs://my-bucket/stts/run1/code.tar.gz"]
    ssh = [*qr, "ssh", "stts-v5p", "--zone=us-east5-a", "--node=all", "--worker=all"]
    assert [c[: len(ssh)] for c in commands[5:]] == [ssh, ssh] and len(commands) == 7
    setup = commands[5][-1]
    assert "gcloud storage cp gs://my-bucket/stts/run1/code.tar.gz" in setup and "'jax[tpu]==" in setup
    assert remote(commands[6]) == train_command(
        "configs/synthetic.py:variant=tiny,frames=8",
        {"data.data_dir": "gs://my-bucket/tfds", "stts.prune_ratio": "0.3"},
        "gs://my-bucket/stts/run1",
        distributed=True,
        python="../stts_jax_venv/bin/python",
    )
    start = commands[6][-1]
    assert "< /dev/null & pid=$!; echo $pid > ../stts_jax_train.pid" in start  # detached, no terminal
    follow, copy, stop = afterwards
    ssh = [*qr, "ssh", "stts-v5p", "--zone=us-east5-a"]
    assert follow == [*ssh, "--node=0", "--worker=0", "--command=tail -n 100 -F stts_jax_train.log"]
    logs = 'gs://my-bucket/stts/run1/logs/"$(hostname)".log'
    assert copy == [*ssh, "--node=all", "--worker=all", f"--command=gcloud storage cp stts_jax_train.log {logs}"]
    assert stop == [*ssh, "--node=all", "--worker=all", '--command=kill -TERM "$(cat stts_jax_train.pid)"']


def fake_worker(home, python_body: str) -> None:
    """A TPU VM's home directory after the setup step: the code folder and a virtualenv whose python is a
    shell script (`python_body`) standing in for the training."""
    (home / tpu_vm.CODE_DIR).mkdir()
    python = home / tpu_vm.VENV_DIR / "bin" / "python"
    python.parent.mkdir(parents=True)
    python.write_text("#!/bin/sh\n" + python_body)
    python.chmod(0o755)


def on_worker(home, script: str) -> subprocess.CompletedProcess:
    """`script` as `gcloud ... ssh --command` runs it on a worker: bash, in the home directory, its output
    captured until the session's end (so the call returns only once nothing holds the session's pipes)."""
    return subprocess.run(["bash", "-c", script], cwd=home, capture_output=True, text=True, timeout=60)


def test_the_training_starts_detached_on_each_worker_and_stops_on_sigterm(tmp_path):
    """The start command of the plan, run by bash in a worker's home with a stand-in training: the session
    ends while the training runs on in its own session, its output goes to the log, a second start is refused,
    and the stop command's SIGTERM reaches it."""
    fake_worker(
        tmp_path,
        'echo "training: $*"\n'
        "trap 'echo \"SIGTERM: checkpoint saved\"; kill $sleeper; exit 0' TERM\n"
        "sleep 30 & sleeper=$!\n"
        "wait $sleeper\n",
    )
    run = make_run("configs/synthetic.py", "gs://my-bucket/run", {"stts.prune_ratio": "0.3"}, "v5p-8")
    started = on_worker(tmp_path, tpu_vm.train_script(run, startup_seconds=1))
    assert started.returncode == 0, started.stderr
    pid = int((tmp_path / tpu_vm.PID_FILE).read_text())
    try:
        assert f"training in the background (pid {pid})" in started.stdout
        assert os.getsid(pid) == pid != os.getsid(0)  # its own session: the end of the ssh session spares it
        argv = train_command(run.config, run.overrides, run.workdir, distributed=True, python="")[1:]
        assert (tmp_path / tpu_vm.LOG_FILE).read_text() == f"training: {shlex.join(argv)}\n"

        again = on_worker(tmp_path, tpu_vm.train_script(run, startup_seconds=1))
        assert again.returncode == 1 and f"a training already runs here (pid {pid}); stop it first" in again.stderr
        assert int((tmp_path / tpu_vm.PID_FILE).read_text()) == pid

        assert on_worker(tmp_path, tpu_vm.stop_script()).returncode == 0
        for _ in range(100):  # the trap runs once `wait` returns
            if "SIGTERM: checkpoint saved" in (tmp_path / tpu_vm.LOG_FILE).read_text():
                break
            time.sleep(0.05)
        assert (tmp_path / tpu_vm.LOG_FILE).read_text().endswith("SIGTERM: checkpoint saved\n")
    finally:  # the stand-in and its `sleep`, if a failed assertion left them running
        with contextlib.suppress(ProcessLookupError):
            if os.getpgid(pid) == pid:  # its own group (setsid): the group is the stand-in and its `sleep`
                os.killpg(pid, signal.SIGKILL)
            else:
                os.kill(pid, signal.SIGKILL)


def test_a_training_that_fails_at_once_fails_the_launch_with_its_log(tmp_path):
    fake_worker(tmp_path, 'echo "ConfigError: stts.prune_ratio 1.5 must be < 1"; exit 3\n')
    run = make_run("configs/synthetic.py", "gs://my-bucket/run", {}, "v5p-8")
    started = on_worker(tmp_path, tpu_vm.train_script(run, startup_seconds=1))
    assert started.returncode == 3
    assert "the training exited with status 3" in started.stderr
    assert started.stderr.endswith("ConfigError: stts.prune_ratio 1.5 must be < 1\n")


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
    commands, afterwards = dry_run(
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
    for command in commands[-2:] + afterwards[1:]:
        assert command[:9] == [*qr, "ssh", "stts-v5p", zone, "--node=all", "--worker=all"]
    assert remote(commands[-1])[-2:] == ["--distributed", GCS_DATA]
    assert afterwards[0][7:9] == ["--node=0", "--worker=0"]


def test_xpk_dry_run(capsys):
    commands, afterwards = dry_run(
        xpk.main,
        [*XPK, "--accelerator=v6e-256", "--num-slices=4", "--config=configs/synthetic.py:frames=8", GCS_DATA],
        capsys,
    )
    assert commands[0][3:6] == ["--config=configs/synthetic.py:frames=8", "--topology=v6e:16x16", "--num_slices=4"]
    assert afterwards == []
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
