"""Train: python -m stts_jax.train --config=configs/synthetic.py:variant=tiny --workdir=DIR [--config.x.y=v].

In a multi-process run (--coordinator on each machine, or --distributed on a pod) the processes watch each
other: one that sends no heartbeat for --heartbeat_timeout_seconds (killed, crashed, hung) stops the others
with an error naming it, instead of leaving them blocked in a collective; rerunning resumes.
"""

from __future__ import annotations

import atexit
import contextlib
import os
import subprocess
import sys
import threading

import jax
from absl import flags
from jax._src import distributed as jax_distributed  # the coordination client: no public handle (JAX 0.10)
from ml_collections import config_flags

from stts_jax import cli
from stts_jax.errors import TrainingError
from stts_jax.train.checkpoint import prepare_workdir
from stts_jax.train.command import PEER_LOST_EXIT_CODE, PREEMPTED_EXIT_CODE
from stts_jax.train.loop import train

# a finished process waits this long for the others to finish too (process 0's metrics upload is the slowest)
FINISH_BARRIER_SECONDS = 1800
# a peer that disconnects this soon after this process passed the finish barrier has finished, not died
FINISHED_GRACE_SECONDS = 2.0
# the companion of a training process: its stdin is a pipe from that process, which writes a byte when it
# exits in order; end of file without one means that it was killed or aborted, and the companion says so
ABRUPT_END_NOTICE = """import signal, sys
signal.signal(signal.SIGINT, signal.SIG_IGN)
if not sys.stdin.buffer.read(1):
    sys.stderr.write(sys.argv[1] + "\\n")
"""

config_flags.DEFINE_config_file("config", None, "experiment config file (configs/*.py:args)", lock_config=True)
flags.DEFINE_string("workdir", None, "run directory: checkpoints, metrics; resumed if it holds a checkpoint")
cli.define_process_flags()
flags.DEFINE_integer(
    "heartbeat_timeout_seconds",
    100,
    "multi-process runs: a process silent this long (killed, crashed, hung) is declared dead, and the others "
    f"stop within about 1.1x this with exit code {PEER_LOST_EXIT_CODE} and an error naming it; rerunning "
    "resumes. 100 (JAX's default) rides out a pod host's long pauses",
    lower_bound=2,
)
flags.mark_flags_as_required(["config", "workdir"])


class PeerWatch:
    """A thread that asks JAX's coordination service, every tenth of the heartbeat timeout, which processes
    still send heartbeats; when one has gone silent (or process 0, which hosts the service, is unreachable) it
    prints which and ends this process with PEER_LOST_EXIT_CODE, whatever the main thread is blocked in.

    Needs `jax_enable_recoverability` set before `jax.distributed.initialize`: without it the service's verdict
    is a LOG(FATAL) inside the runtime (exit 134, a C++ stack trace, no word of resuming), and the client's
    `missed_heartbeat_callback` cannot be a Python function (JAX 0.10 aborts with std::bad_cast). One case
    stays with the runtime: when process 0 dies, the others lose the service and the runtime aborts them at
    once (exit 134); a companion process then prints what happened and that rerunning resumes."""

    def __init__(self, workdir: str, heartbeat_timeout_seconds: int):
        self.client = jax_distributed.global_state.client
        self.workdir, self.timeout = workdir, heartbeat_timeout_seconds
        self.processes = list(range(jax.process_count()))
        self.resume = f"Rerun the same command on every process: the run resumes from the last checkpoint in {workdir}."
        self.coordinator = f"process 0, at {jax_distributed.global_state.coordinator_address}"
        self._start_companion(
            f"error: process {jax.process_index()} of {len(self.processes)} ended abruptly: killed, or aborted "
            f"by the JAX runtime, which ends every process at once when the coordinator ({self.coordinator}) is "
            f"gone. {self.resume}"
        )
        self.finished = threading.Event()
        self.thread = threading.Thread(target=self._watch, name="peer-watch", daemon=True)
        self.thread.start()

    def _start_companion(self, notice: str) -> None:
        read, self.orderly_end = os.pipe()
        subprocess.Popen([sys.executable, "-c", ABRUPT_END_NOTICE, notice], stdin=read)
        os.close(read)
        atexit.register(self._end_in_order)

    def _end_in_order(self) -> None:
        with contextlib.suppress(BrokenPipeError):  # the companion is gone too (a signal to the process group)
            os.write(self.orderly_end, b"1")

    def _watch(self) -> None:
        while True:
            try:
                # a barrier among the live processes: returns once each live one has asked, or the silent
                # ones have been declared dead by the service
                live = self.client.get_live_nodes(self.processes)
            except jax.errors.JaxRuntimeError:
                live = None
            if self.finished.is_set():
                return
            # at the end, a peer disconnects as soon as it has passed the finish barrier, maybe just before
            # this process has marked itself finished
            if live is None or (len(live) < len(self.processes) and not self.finished.wait(FINISHED_GRACE_SECONDS)):
                self._stop(live)
            if self.finished.wait(self.timeout / 10):
                return

    def _stop(self, live: dict[int, int] | None) -> None:
        if live is None:
            lost = f"the coordinator ({self.coordinator}) is unreachable: it died, hangs or its machine is gone"
        else:
            missing = ", ".join(str(p) for p in self.processes if p not in live)
            lost = f"process {missing} of {len(self.processes)} is gone: it exited, or sent no heartbeat for "
            lost += f"{self.timeout} s (dead or hung)"
        print(f"error: {lost}; process {jax.process_index()} stops too. {self.resume}", file=sys.stderr, flush=True)
        sys.stdout.flush()
        self._end_in_order()
        # sys.exit in a thread ends only the thread, and the main thread may wait in a collective for good
        os._exit(PEER_LOST_EXIT_CODE)

    def await_verdict(self) -> None:
        """After a failed step: a collective with a dead peer fails (CPU) or hangs (TPU). Give the service the
        heartbeat timeout to say whether a peer is gone (then the watch reports it and ends the process)."""
        self.thread.join(self.timeout * 1.2 + FINISHED_GRACE_SECONDS)

    def finish(self) -> None:
        """Wait for every process to finish, then leave in order: the others disconnect, and process 0, which
        hosts the coordination service, waits for them (leaving first, it would make the JAX runtime abort
        them: measured, 3 of 6 two-process runs); a peer leaving early would look dead to the others' watches."""
        try:
            self.client.wait_at_barrier("stts_jax.train/finished", FINISH_BARRIER_SECONDS * 1000)
        except jax.errors.JaxRuntimeError as e:
            self.await_verdict()
            raise TrainingError(
                f"process {jax.process_index()} finished, but not all others did within {FINISH_BARRIER_SECONDS} s "
                f"({str(e).splitlines()[0]}). {self.resume}"
            ) from e
        self.finished.set()
        self.thread.join()  # one query of this process at a time
        if jax.process_index() == 0:
            others_gone = threading.Thread(target=self._await_disconnects, name="await-disconnects", daemon=True)
            others_gone.start()
            others_gone.join(self.timeout)  # bounded, should one hang on its way out
        else:
            jax.distributed.shutdown()

    def _await_disconnects(self) -> None:
        with contextlib.suppress(jax.errors.JaxRuntimeError):  # the service shut down after the timeout
            while len(self.client.get_live_nodes(self.processes)) > 1:  # returns as the others disconnect
                pass


def start_distributed(heartbeat_timeout_seconds: int, **where) -> None:
    """jax.distributed.initialize(**where) with the heartbeat timeout, in the mode PeerWatch needs."""
    jax.config.update("jax_enable_recoverability", True)
    jax.distributed.initialize(**where, heartbeat_timeout_seconds=heartbeat_timeout_seconds)


def main(argv):
    del argv
    f = flags.FLAGS
    prepare_workdir(f.workdir)
    where = cli.distributed_where()
    if where is not None:
        start_distributed(f.heartbeat_timeout_seconds, **where)
    watch = PeerWatch(f.workdir, f.heartbeat_timeout_seconds) if jax.process_count() > 1 else None
    try:
        metrics = train(f.config, f.workdir)
    except cli.INPUT_ERRORS:
        raise
    except Exception as e:
        if watch:
            summary = str(e).splitlines()[0] if str(e) else type(e).__name__
            print(f"training failed ({summary}); asking whether another process died", file=sys.stderr)
            watch.await_verdict()
        raise
    if watch:
        watch.finish()
    step = int(metrics.get("step", 0))
    if metrics.get("preempted"):
        # non-zero, so that a job scheduler (GKE JobSet, xpk --max-restarts) restarts the run
        print(f"stopped by {metrics['stopped_by']} at step {step}, checkpoint saved; rerun the same command to resume")
        sys.exit(PREEMPTED_EXIT_CODE)
    print(f"finished at step {step}: loss {metrics.get('loss', float('nan')):.4f}")


if __name__ == "__main__":
    cli.run(main)
