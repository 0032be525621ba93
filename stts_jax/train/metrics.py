"""Run metrics to TensorBoard event files (tensorboard's own writer, no TensorFlow) and metrics.jsonl.

Only process 0 writes; the others get a writer that drops everything, so callers need no branches.
`tensorboard --logdir WORKDIR` shows the curves; `metrics.jsonl` holds the same scalars, one line per
logged step, tagged `train/...` or `validation/...`. A resumed run first drops the rows of steps after
the checkpoint it resumed from (they are computed again) and marks the restart in the event file, so
TensorBoard discards those steps too: no step is ever listed twice. On a gs:// workdir (object stores
cannot append) both files are written locally and uploaded whole every `upload_seconds` and at close.
"""

from __future__ import annotations

import json
import os
import shutil
import statistics
import tempfile
import time

from etils import epath
from tensorboard.compat.proto import event_pb2, summary_pb2
from tensorboard.summary.writer.event_file_writer import EventFileWriter

METRICS_FILE = "metrics.jsonl"


class MetricsWriter:
    def __init__(self, workdir: str, start_step: int = 0, enabled: bool = True, upload_seconds: float = 60.0):
        self.enabled = enabled
        if not enabled:
            return
        self.workdir = epath.Path(workdir)
        self.remote = "://" in workdir
        self.local = tempfile.mkdtemp(prefix="stts_metrics_") if self.remote else workdir
        self.upload_seconds, self.uploaded = upload_seconds, time.monotonic()
        rows = []
        if (self.workdir / METRICS_FILE).exists():
            rows = [r for r in (self.workdir / METRICS_FILE).read_text().splitlines() if r.strip()]
        kept = [r for r in rows if json.loads(r)["step"] <= start_step]  # later steps are computed again
        jsonl_path = os.path.join(self.local, METRICS_FILE)
        with open(jsonl_path + ".tmp", "w") as f:
            f.write("".join(r + "\n" for r in kept))
        os.replace(jsonl_path + ".tmp", jsonl_path)
        self._jsonl = open(jsonl_path, "a")  # noqa: SIM115 (closed in close())
        self._events = EventFileWriter(self.local, flush_secs=30)
        if start_step > 0:  # TensorBoard drops what earlier files logged at this restart's step and after
            restart = event_pb2.SessionLog(status=event_pb2.SessionLog.START)
            self._events.add_event(event_pb2.Event(wall_time=time.time(), step=start_step + 1, session_log=restart))
        if self.remote and kept != rows:
            self._upload()

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
        if self.remote and time.monotonic() - self.uploaded > self.upload_seconds:
            self._upload()

    def _upload(self) -> None:
        self._events.flush()
        self._jsonl.flush()
        self._copy_files()
        self.uploaded = time.monotonic()

    def _copy_files(self) -> None:
        """Every local file, whole, to the workdir (an object is replaced in one piece)."""
        for name in os.listdir(self.local):
            if name == METRICS_FILE or name.startswith("events.out.tfevents"):
                with open(os.path.join(self.local, name), "rb") as f:
                    (self.workdir / name).write_bytes(f.read())

    def close(self) -> None:
        if not self.enabled:
            return
        self._events.close()
        self._jsonl.close()
        if self.remote:
            self._copy_files()
            shutil.rmtree(self.local, ignore_errors=True)


def median_step_seconds(run_dir: str) -> float:
    """The median training-step time, leaving out the first steps (compilation, warm-up)."""
    with open(os.path.join(run_dir, METRICS_FILE)) as f:
        times = [json.loads(line).get("train/step_seconds") for line in f]
    times = [t for t in times if t is not None]
    return statistics.median(times[5:] if len(times) > 10 else times)
