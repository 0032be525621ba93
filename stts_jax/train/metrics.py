"""Run metrics to TensorBoard event files (tensorboard's own writer, no TensorFlow) and metrics.jsonl.

Only process 0 writes; the others get a writer that drops everything, so callers need no branches.
`tensorboard --logdir WORKDIR` shows the curves; `metrics.jsonl` holds the same scalars, one line per
logged step, tagged `train/...` or `validation/...`. On a gs:// workdir only the event files are
written (through fsspec / gcsfs): object stores cannot append to a JSON-lines file.
"""

from __future__ import annotations

import json
import os
import statistics
import time

from tensorboard.compat.proto import event_pb2, summary_pb2
from tensorboard.summary.writer.event_file_writer import EventFileWriter


class MetricsWriter:
    def __init__(self, workdir: str, enabled: bool = True):
        self.enabled = enabled
        if enabled:
            self._events = EventFileWriter(workdir, flush_secs=30)
            local = "://" not in workdir
            self._jsonl = open(os.path.join(workdir, "metrics.jsonl") if local else os.devnull, "a")  # noqa: SIM115

    def write(self, step: int, scalars: dict[str, float], prefix: str) -> None:
        """Scalars of one step under `prefix/` (e.g. "train", "validation")."""
        if not self.enabled:
            return
        values = [summary_pb2.Summary.Value(tag=f"{prefix}/{k}", simple_value=float(v)) for k, v in scalars.items()]
        self._events.add_event(
            event_pb2.Event(wall_time=time.time(), step=step, summary=summary_pb2.Summary(value=values))
        )
        self._jsonl.write(json.dumps({"step": step, **{f"{prefix}/{k}": float(v) for k, v in scalars.items()}}) + "\n")
        self._jsonl.flush()

    def close(self) -> None:
        if self.enabled:
            self._events.close()
            self._jsonl.close()


def median_step_seconds(run_dir: str) -> float:
    """The median training-step time, leaving out the first steps (compilation, warm-up)."""
    with open(os.path.join(run_dir, "metrics.jsonl")) as f:
        times = [json.loads(line).get("train/step_seconds") for line in f]
    times = [t for t in times if t is not None]
    return statistics.median(times[5:] if len(times) > 10 else times)
