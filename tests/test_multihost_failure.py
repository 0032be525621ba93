"""One dead process of a two-process run (`--coordinator`, fake CPU devices, mesh data=2), killed with SIGKILL
after the first checkpoint: the other stops within the heartbeat timeout with a last line that names the
dead process and says that rerunning resumes (instead of waiting in a collective for good), and the same two
commands then resume from the last checkpoint and finish with one row of training metrics per step."""

from __future__ import annotations

import os
import re
import signal
import time

import pytest
from conftest import synthetic_config as load_config
from test_resume_reference import command, free_port, metrics, start, stop

from stts_jax.data.sources import source
from stts_jax.train.command import PEER_LOST_EXIT_CODE

HEARTBEAT_SECONDS = 10
STEPS, EVERY = 6, 2
# the watch's bound (1.1 x the timeout and a 2 s grace) with room for two busy cores
STOP_BOUND_SECONDS = 1.1 * HEARTBEAT_SECONDS + 2 + 10
RESUMES = r"Rerun the same command on every process: the run resumes from the last checkpoint in {workdir}\."


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    """The synthetic dataset, built once before processes read it side by side."""
    path = str(tmp_path_factory.mktemp("data"))
    source(load_config(path, 1, 1), "train")
    return path


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    """One compilation cache for all the runs: only the first compiles."""
    return str(tmp_path_factory.mktemp("compilation_cache"))


def start_run(data_dir, workdir, cache) -> list:
    extra = ("--config.train.mesh.data=2", f"--coordinator=127.0.0.1:{free_port()}", "--num_processes=2")
    args = [*command(data_dir, workdir, STEPS, EVERY, *extra), f"--heartbeat_timeout_seconds={HEARTBEAT_SECONDS}"]
    return [start([*args, f"--process_id={i}"], cache) for i in range(2)]


def saved_steps(workdir) -> list[int]:
    """Committed checkpoints: Orbax writes a step under a temporary name and renames it when complete."""
    folder = os.path.join(workdir, "checkpoints")
    return sorted(int(name) for name in os.listdir(folder) if name.isdigit()) if os.path.isdir(folder) else []


def kill_after_first_checkpoint(data_dir, workdir, cache, victim: int) -> tuple[int, str, float]:
    """(return code, output, seconds from the kill to its end) of the process that survives `victim`."""
    processes = start_run(data_dir, workdir, cache)
    survivor = processes[1 - victim]
    try:
        deadline = time.monotonic() + 600
        while not saved_steps(workdir):
            assert all(p.poll() is None for p in processes), "a process ended before the first checkpoint"
            assert time.monotonic() < deadline, "no checkpoint after 10 min"
            time.sleep(0.2)
        processes[victim].send_signal(signal.SIGKILL)
        killed = time.monotonic()
        output = survivor.communicate(timeout=STOP_BOUND_SECONDS + 60)[0]
        return survivor.returncode, output, time.monotonic() - killed
    finally:
        stop(*processes)


def rerun_finishes(data_dir, workdir, cache) -> None:
    interrupted_at = saved_steps(workdir)[-1]
    assert 0 < interrupted_at < STEPS  # killed mid-run
    processes = start_run(data_dir, workdir, cache)
    try:
        outputs = [p.communicate(timeout=600)[0] for p in processes]
    finally:
        stop(*processes)
    for p, out in zip(processes, outputs, strict=True):
        assert p.returncode == 0, out[-3000:]
        assert f"resumed from step {interrupted_at} " in out
    assert f"finished at step {STEPS}:" in outputs[0]
    assert [row["step"] for row in metrics(workdir) if "train/loss" in row] == list(range(1, STEPS + 1))
    assert saved_steps(workdir)[-1] == STEPS


@pytest.mark.slow  # 2-4 min on 2 busy cores: four process start-ups, one compile (the rerun hits the cache)
def test_a_killed_process_stops_the_other_with_its_name_and_the_same_commands_resume(data_dir, cache, tmp_path):
    workdir = str(tmp_path / "run")
    code, output, seconds = kill_after_first_checkpoint(data_dir, workdir, cache, victim=1)
    assert code == PEER_LOST_EXIT_CODE, output[-3000:]
    assert seconds < STOP_BOUND_SECONDS, f"process 0 stopped {seconds:.0f} s after process 1 was killed"
    last_line = output.strip().splitlines()[-1]
    expected = (
        rf"error: process 1 of 2 is gone: it exited, or sent no heartbeat for {HEARTBEAT_SECONDS} s \(dead or hung\); "
        rf"process 0 stops too\. {RESUMES.format(workdir=re.escape(workdir))}"
    )
    assert re.fullmatch(expected, last_line), last_line
    assert "Check failure stack trace" not in output  # not ended by the JAX runtime's abort
    rerun_finishes(data_dir, workdir, cache)


@pytest.mark.slow  # 1.5-3 min on 2 busy cores: four process start-ups, compiles from the cache
def test_a_killed_coordinator_ends_the_other_with_its_name_and_the_same_commands_resume(data_dir, cache, tmp_path):
    """Process 0 hosts JAX's coordination service; without it the runtime aborts process 1 at once (or the
    watch, if it sees the service gone first, stops it); either way its last line names process 0."""
    workdir = str(tmp_path / "run")
    code, output, seconds = kill_after_first_checkpoint(data_dir, workdir, cache, victim=0)
    assert seconds < STOP_BOUND_SECONDS, f"process 1 stopped {seconds:.0f} s after process 0 was killed"
    last_line = output.strip().splitlines()[-1]
    coordinator = r"process 0, at 127\.0\.0\.1:\d+"
    resumes = RESUMES.format(workdir=re.escape(workdir))
    aborted = (
        rf"error: process 1 of 2 ended abruptly: killed, or aborted by the JAX runtime, which ends every process "
        rf"at once when the coordinator \({coordinator}\) is gone\. {resumes}"
    )
    watched = rf"error: the coordinator \({coordinator}\) is unreachable: .*; process 1 stops too\. {resumes}"
    if code == -signal.SIGABRT:
        assert re.fullmatch(aborted, last_line), last_line
    else:
        assert code == PEER_LOST_EXIT_CODE, output[-3000:]
        assert re.fullmatch(watched, last_line), last_line
    rerun_finishes(data_dir, workdir, cache)
