"""TFDS builders (array_record; read back with `tfds.data_source`, no TensorFlow needed).

`SyntheticVideoQA`: the procedural set of `synthetic.py`, splits from disjoint seeds.
`ManifestVideoQA`: any video-QA set written as JSONL lines
  {"id", "video" (path relative to the manifest), "question", "options" (optional),
   "answer" (index into options, or free text), "start"/"end" (seconds, optional)},
decoded with PyAV and sampled as Molmo2 does (at most `max_fps`, at most `max_frames`).
Bad lines and unreadable videos are counted and skipped with a warning naming the file and line;
`strict=True` raises instead. The counts are written to `<data_dir>/.../skipped.json`.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
from collections import Counter

import numpy as np
import tensorflow_datasets as tfds

from stts_jax.data.frames import sample_frames
from stts_jax.data.synthetic import SyntheticConfig, generate_example

log = logging.getLogger(__name__)

SPLIT_SEEDS = {"train": 1, "validation": 2, "test": 3}


class DataError(ValueError):
    """An example cannot be used; the message names the file, the line and the problem; `kind` is a
    short category for the skip counters."""

    def __init__(self, message: str, kind: str):
        super().__init__(message)
        self.kind = kind


def _video_feature(channels: bool = True) -> tfds.features.Tensor:
    shape = (None, None, None, 3) if channels else (None, None, None)
    return tfds.features.Tensor(shape=shape, dtype=np.uint8, encoding=tfds.features.Encoding.ZLIB)


def _qa_info(builder: tfds.core.GeneratorBasedBuilder, **extra) -> tfds.core.DatasetInfo:
    """The features every video-QA builder writes (answer -1 = free text), plus `extra` ones."""
    features = {
        "id": tfds.features.Text(),
        "video": _video_feature(),
        "timestamps": tfds.features.Tensor(shape=(None,), dtype=np.float32),
        "question": tfds.features.Text(),
        "options": tfds.features.Sequence(tfds.features.Text()),
        "answer": np.int32,
        "answer_text": tfds.features.Text(),
        "family": tfds.features.Text(),
    }
    return tfds.core.DatasetInfo(
        builder=builder, description=type(builder).__doc__, features=tfds.features.FeaturesDict(features | extra)
    )


@dataclasses.dataclass
class SyntheticBuilderConfig(tfds.core.BuilderConfig):
    synthetic: SyntheticConfig = SyntheticConfig()
    num_examples: tuple[tuple[str, int], ...] = (("train", 600), ("validation", 120), ("test", 240))


class SyntheticVideoQA(tfds.core.GeneratorBasedBuilder):
    """Procedural video QA with ground-truth object masks."""

    VERSION = tfds.core.Version("1.0.0")
    BUILDER_CONFIGS = [SyntheticBuilderConfig(name="default")]

    def _info(self) -> tfds.core.DatasetInfo:
        return _qa_info(self, masks=_video_feature(channels=False))

    def _split_generators(self, dl_manager):
        return {split: self._generate_examples(split, n) for split, n in self.builder_config.num_examples}

    def _generate_examples(self, split: str, count: int):
        cfg = self.builder_config.synthetic
        for index in range(count):
            ex = generate_example(SPLIT_SEEDS[split], index, cfg)
            ex["timestamps"] = (np.arange(cfg.frames) / cfg.fps).astype(np.float32)
            ex["answer_text"] = ex["options"][ex["answer"]]
            del ex["fps"]
            yield ex["id"], ex


def build_synthetic(data_dir: str, config: SyntheticBuilderConfig | None = None) -> SyntheticVideoQA:
    builder = SyntheticVideoQA(
        data_dir=data_dir, config=config or SyntheticBuilderConfig(name="default"), file_format="array_record"
    )
    builder.download_and_prepare()
    return builder


# -- manifests of real videos ------------------------------------------------------------------------------


def decode_video(path: str, max_frames: int, max_fps: float, start=None, end=None) -> tuple[np.ndarray, np.ndarray]:
    """PyAV decode of the Molmo2-sampled frames -> (frames [T, H, W, 3] uint8, timestamps [T] s)."""
    import av

    if not os.path.exists(path):
        raise DataError(f"{path}: file not found", "missing file")
    try:
        with av.open(path) as container:
            if not container.streams.video:
                raise DataError(f"{path}: the container holds no video frames", "no frames")
            stream = container.streams.video[0]
            frames = [f.to_ndarray(format="rgb24") for f in container.decode(stream)]
            fps = float(stream.average_rate or stream.guessed_rate or 0)
    except DataError:
        raise
    except Exception as e:  # PyAV raises many error types for corrupt, truncated or non-video files
        raise DataError(f"{path}: cannot be decoded ({type(e).__name__}: {e})", "unreadable video") from e
    if not frames:
        raise DataError(f"{path}: the video has no frames", "no frames")
    if fps <= 0:
        raise DataError(f"{path}: no frame rate in the container", "unreadable video")
    try:
        indices, times = sample_frames(len(frames), fps, max_frames, max_fps, start, end)
    except ValueError as e:
        raise DataError(f"{path}: {e}", "empty clip") from e
    return np.stack([frames[i] for i in indices]), times.astype(np.float32)


REQUIRED = ("id", "video", "question", "answer")


def parse_manifest_line(line: str, where: str) -> dict:
    """One JSONL line -> a checked record (raises DataError naming `where` = file:line)."""
    try:
        record = json.loads(line)
    except json.JSONDecodeError as e:
        raise DataError(f"{where}: not valid JSON ({e.msg})", "malformed line") from e
    if not isinstance(record, dict):
        raise DataError(f"{where}: a line must be a JSON object", "malformed line")
    missing = [k for k in REQUIRED if k not in record]
    if missing:
        raise DataError(f"{where}: missing field(s) {missing}; each line needs {list(REQUIRED)}", "missing field")
    options = record.get("options") or []
    answer = record["answer"]
    if options:
        if not isinstance(answer, int) or not 0 <= answer < len(options):
            raise DataError(
                f"{where}: answer {answer!r} is not an index into its {len(options)} options", "answer out of range"
            )
    elif not isinstance(answer, str):
        raise DataError(f"{where}: without options the answer must be text, got {answer!r}", "malformed line")
    for key in ("start", "end"):
        if key in record and not isinstance(record[key], int | float):
            raise DataError(f"{where}: {key} must be a number of seconds", "malformed line")
    return record


@dataclasses.dataclass
class ManifestBuilderConfig(tfds.core.BuilderConfig):
    manifests: tuple[tuple[str, str], ...] = ()  # (split, path to JSONL)
    max_frames: int = 64
    max_fps: float = 2.0
    strict: bool = False


class ManifestVideoQA(tfds.core.GeneratorBasedBuilder):
    """Video QA from JSONL manifests of local video files."""

    VERSION = tfds.core.Version("1.0.0")

    def _info(self) -> tfds.core.DatasetInfo:
        return _qa_info(self)

    def _split_generators(self, dl_manager):
        return {split: self._generate_examples(split, path) for split, path in self.builder_config.manifests}

    def _generate_examples(self, split: str, manifest: str):
        cfg = self.builder_config
        skipped: Counter = Counter()
        root = os.path.dirname(os.path.abspath(manifest))
        with open(manifest) as f:
            for number, line in enumerate(f, start=1):
                if not line.strip():
                    continue
                where = f"{manifest}:{number}"
                try:
                    record = parse_manifest_line(line, where)
                    video, times = decode_video(
                        os.path.join(root, record["video"]),
                        cfg.max_frames,
                        cfg.max_fps,
                        record.get("start"),
                        record.get("end"),
                    )
                except DataError as e:
                    message = str(e) if str(e).startswith(where) else f"{where}: {e}"
                    if cfg.strict:
                        raise DataError(f"{message} (strict mode; strict=False skips and counts)", e.kind) from e
                    log.warning("skipping %s", message)
                    skipped[e.kind] += 1
                    continue
                options = list(record.get("options") or [])
                answer = record["answer"]
                yield (
                    record["id"],
                    {
                        "id": str(record["id"]),
                        "video": video,
                        "timestamps": times,
                        "question": record["question"],
                        "options": options,
                        "answer": np.int32(answer if options else -1),
                        "answer_text": options[answer] if options else answer,
                        "family": str(record.get("family", "all")),
                    },
                )
        self.skipped = getattr(self, "skipped", {})
        self.skipped[split] = dict(skipped)
        report = os.path.join(self.data_dir, "skipped.json")
        os.makedirs(self.data_dir, exist_ok=True)
        with open(report, "w") as out:
            json.dump(self.skipped, out, indent=2)
        if skipped:
            log.warning(
                "%s: skipped %d example(s): %s (details above; report in %s)",
                manifest,
                sum(skipped.values()),
                dict(skipped),
                report,
            )
