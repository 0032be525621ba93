"""Run metrics to TensorBoard event files (tensorboardX's writer, no TensorFlow) and metrics.jsonl.

Only process 0 writes; the others get a writer that drops everything, so callers need no branches.
`tensorboard --logdir WORKDIR` shows the scalars, the evaluation pictures, the score histograms and the
run's hyperparameters; `metrics.jsonl` holds the same scalars, one line per logged step, tagged
`train/...` or `validation/...`. A resumed run first drops the rows of steps after the checkpoint it
resumed from (they are computed again) and purges them from TensorBoard (`purge_step`): no step is
ever listed twice. On a gs:// workdir (object stores cannot append) both files are written locally and
uploaded whole every `upload_seconds`, with every checkpoint (`upload`) and at close.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import statistics
import tempfile
import time
from collections.abc import Mapping

import numpy as np
from etils import epath
from tensorboardX import SummaryWriter
from tensorboardX.summary import hparams

from stts_jax.errors import DataError

METRICS_FILE = "metrics.jsonl"
EVENTS_PREFIX = "events.out.tfevents"


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
        # a restart's purge_step hides what earlier event files logged from that step on; the suffix keeps a
        # restart within the same second (the file name's time) from replacing the earlier file, and sorts after it
        self._events = SummaryWriter(
            self.local,
            purge_step=start_step + 1 if start_step else None,
            flush_secs=30,
            filename_suffix=f".from_step_{start_step:010d}",
        )
        if kept != rows:
            self.upload()

    def write(self, step: int, scalars: Mapping[str, float], prefix: str) -> None:
        """Scalars of one step under `prefix/` (e.g. "train", "validation"); NaN (unknown) is left out."""
        if not self.enabled:
            return
        known = {f"{prefix}/{k}": float(v) for k, v in scalars.items() if not math.isnan(float(v))}
        for tag, value in known.items():
            self._events.add_scalar(tag, value, step)
        self._jsonl.write(json.dumps({"step": step, **known}) + "\n")
        self._jsonl.flush()
        self._maybe_upload()

    def write_images(self, step: int, images: Mapping[str, np.ndarray]) -> None:
        """uint8 [height, width, 3] pictures, one per tag."""
        if not self.enabled:
            return
        for tag, image in images.items():
            self._events.add_image(tag, image, step, dataformats="HWC")
        self._maybe_upload()

    def write_histograms(self, step: int, values: Mapping[str, np.ndarray]) -> None:
        if not self.enabled:
            return
        for tag, array in values.items():
            self._events.add_histogram(tag, np.asarray(array, np.float64).ravel(), step, bins="auto")
        self._maybe_upload()

    def write_hparams(self, values: Mapping[str, bool | str | float | int], metric_tags: list[str]) -> None:
        """The run's hyperparameters, in this run's event file (TensorBoard's HPARAMS tab), with the
        scalar tags it compares them by."""
        if not self.enabled:
            return
        for summary in hparams(dict(values), dict.fromkeys(metric_tags, 0.0)):
            self._events._get_file_writer().add_summary(summary)

    def upload(self) -> None:
        """On a gs:// workdir, both files as written so far to the workdir now; the loop calls it with every
        checkpoint, so a run killed after one resumes with every row up to it. Locally nothing to do."""
        if not (self.enabled and self.remote):
            return
        self._events.flush()
        self._jsonl.flush()
        self._copy_files()
        self.uploaded = time.monotonic()

    def _maybe_upload(self) -> None:
        if self.remote and time.monotonic() - self.uploaded > self.upload_seconds:
            self.upload()

    def _copy_files(self) -> None:
        """Every local file, whole, to the workdir (an object is replaced in one piece)."""
        for name in os.listdir(self.local):
            if name == METRICS_FILE or name.startswith(EVENTS_PREFIX):
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


def train_series(run_dir: str, name: str) -> list[float]:
    """Every logged value of the train metric `name` (e.g. "step_seconds") of a local run, in step order. A
    last line cut short (a run killed while writing it; its resume rewrites it) is left out."""
    path = os.path.join(run_dir, METRICS_FILE)
    with open(path) as f:
        lines = [line for line in f if line.strip()]
    values = []
    for i, line in enumerate(lines):
        try:
            values.append(json.loads(line).get(f"train/{name}"))
        except json.JSONDecodeError:
            if i < len(lines) - 1:
                raise DataError(f"{path} line {i + 1} is not JSON: {line[:80]!r}", "metrics") from None
    return [v for v in values if v is not None]


def median_step_seconds(run_dir: str) -> float:
    """The median training-step time, leaving out the first steps (warm-up)."""
    times = train_series(run_dir, "step_seconds")
    return statistics.median(times[5:] if len(times) > 10 else times)
