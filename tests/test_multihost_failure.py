"""One dead process of a multi-process run: process 1 of 2 killed with SIGKILL mid-training, process 0 stops
within the heartbeat timeout with an error naming it (not a wait in a collective, not the runtime's abort),
and the same two commands resume from the last checkpoint and finish with one metrics row per step."""

from __future__ import annotations

import os
import re
import signal
import time

import pytest
from conftest import synthetic_config as load_config
from test_resume_reference import command, free_port, metrics, start, stop

from stts_jax.data.sources import source
from stts_jax.train.__main__ import PEER_LOST_EXIT_CODE

HEARTBEAT_SECONDS = 10
STEPS, EVERY = 8, 2
# the watch's bound (1.1 x the timeout, a 2 s grace) plus room for two busy cores
STOP_BOUND_SECONDS = 1.1 * HEARTBEAT_SECONDS + 2 + 10


def run_command(data_dir, workdir, port: int) -> list[str]:
    extra = ("--config.train.mesh.data=2", f"--coordinator=127.0.0.1:{port}", "--num_processes=2")
    return [*command(data_dir, workdir, STEPS, EVERY, *extra), f"--heartbeat_timeout_seconds={HEARTBEAT_SECONDS}"]


def saved_steps(workdir) -> list[int]:
    """Committed checkpoints: Orbax writes a step under a temporary name and renames it when complete."""
    folder = os.path.join(workdir, "checkpoints")
    return sorted(int(name) for name in os.listdir(folder) if name.isdigit()) if os.path.isdir(folder) else []


@pytest.mark.slow  # ~3 min on 2 busy cores: four process start-ups, one compile (the rerun hits the cache)
def test_a_killed_process_stops_the_other_and_the_same_commands_resume(tmp_path):
    data_dir, workdir, cache = str(tmp_path / "data"), str(tmp_path / "run"), str(tmp_path / "compilation_cache")
    source(load_config(data_dir, 1, 1), "train")  # built before two processes read it
    args = run_command(data_dir, workdir, free_port())
    processes = [start([*args, f"--process_id={i}"], cache) for i in range(2)]
    try:
        deadline = time.monotonic() + 600
        while not saved_steps(workdir):
            assert all(p.poll() is None for p in processes), "a process ended before the first checkpoint"
            assert time.monotonic() < deadline, "no checkpoint after 10 min"
            time.sleep(0.2)
        processes[1].send_signal(signal.SIGKILL)
        killed = time.monotonic()
        survivor = processes[0].communicate(timeout=STOP_BOUND_SECONDS + 60)[0]
        stopped_after = time.monotonic() - killed
    finally:
        stop(*processes)
    assert processes[0].returncode == PEER_LOST_EXIT_CODE, survivor[-3000:]
    assert stopped_after < STOP_BOUND_SECONDS, f"process 0 stopped {stopped_after:.0f} s after the kill"
    last_line = survivor.strip().splitlines()[-1]
    assert re.fullmatch(
        rf"error: process 1 of 2 sent no heartbeat for {HEARTBEAT_SECONDS} s: it died or hangs; process 0 stops too\. "
        rf"Rerun the same command on every process: the run resumes from the last checkpoint in {re.escape(workdir)}\.",
        last_line,
    ), last_line
    assert "Check failure stack trace" not in survivor  # not ended by the JAX runtime's abort
    interrupted_at = saved_steps(workdir)[-1]
    assert 0 < interrupted_at < STEPS

    args = run_command(data_dir, workdir, free_port())
    processes = [start([*args, f"--process_id={i}"], cache) for i in range(2)]
    try:
        outputs = [p.communicate(timeout=600)[0] for p in processes]
    finally:
        stop(*processes)
    for p, out in zip(processes, outputs, strict=True):
        assert p.returncode == 0, out[-3000:]
    assert all(f"resumed from step {interrupted_at} " in out for out in outputs)
    assert f"finished at step {STEPS}:" in outputs[0]
    assert [row["step"] for row in metrics(workdir)] == list(range(1, STEPS + 1))
    assert saved_steps(workdir)[-1] == STEPS
