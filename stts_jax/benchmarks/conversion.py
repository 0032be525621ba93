"""One benchmark's questions -> a manifest: each question's video found under the videos folder, its line
written with the video's path relative to the manifest's folder and checked by the manifest's own parser
(`data.manifest.parse_line`), every question that cannot be used skipped and counted by kind.

With subtitles, a question's line carries its video's whole track (`"subtitles": [[start, end, text], ...]`,
seconds on the video's time line); the data pipeline shows the lines near the frames it samples, where Molmo2
shows them (`data.subtitles`), so a run at another frame count needs no new conversion.
"""

from __future__ import annotations

import dataclasses
import json
import os
import posixpath
from collections import Counter, defaultdict
from collections.abc import Sequence
from pathlib import Path

from stts_jax.benchmarks.records import Benchmark, Question
from stts_jax.data.manifest import SkipCounter, parse_line
from stts_jax.errors import ConfigError, DataError

VIDEO_SUFFIXES = (".mp4", ".mkv", ".webm", ".avi", ".mov", ".m4v")


class VideoFolder:
    """The files under the videos folder, listed once: where each question's video lies."""

    def __init__(self, root: Path):
        self.root = root
        self.files: set[str] = set()
        self.folders: set[str] = set()
        self.by_tail: dict[str, list[str]] = defaultdict(list)  # "folder/name" and "name", no suffix -> videos
        for folder, subfolders, names in os.walk(root, followlinks=True):
            prefix = Path(folder).relative_to(root).as_posix()
            prefix = "" if prefix == "." else prefix + "/"
            self.folders.update(prefix + name for name in subfolders)
            for name in names:
                path = prefix + name
                self.files.add(path)
                if posixpath.splitext(name)[1].lower() in VIDEO_SUFFIXES:
                    for tail in {_tail(path, 1), _tail(path, 2), posixpath.splitext(path)[0]}:
                        self.by_tail[tail].append(path)

    def find(self, candidates: Sequence[str]) -> tuple[str, bool]:
        """The video's path under the folder: the first candidate that exists, else the one video at the same
        path with another suffix (.mkv for .mp4, ...), else the one video anywhere that ends with the candidate's
        folder and name (or its name, for a bare name), then with `True`: found outside the benchmark's layout.
        DataError "frames, not a video" when a candidate is a folder, else "missing video"."""
        for candidate in candidates:
            if candidate in self.files:
                return candidate, False
        for candidate in candidates:
            same = self.by_tail.get(posixpath.splitext(candidate)[0], [])
            if len(same) == 1 and posixpath.dirname(same[0]) == posixpath.dirname(candidate):
                return same[0], False
        for candidate in candidates:
            if candidate in self.folders:
                raise DataError(
                    f"{self.root / candidate} is a folder (of frames?), not a video file; encode its frames into a "
                    "video (MVBench's episodic reasoning: <folder>/video.mp4 at 3 fps, as Molmo2 does)",
                    "frames, not a video",
                )
        for candidate in candidates:
            found = self.by_tail.get(_tail(candidate, 2), [])
            if len(found) == 1:
                return found[0], True
        raise DataError(f"no video at {' or '.join(candidates)} under {self.root}", "missing video")


def _tail(path: str, parts: int) -> str:
    """The last `parts` components of a relative path, without the file's suffix."""
    return "/".join(posixpath.splitext(path)[0].split("/")[-parts:])


@dataclasses.dataclass
class Report:
    """What a conversion wrote and skipped."""

    benchmark: str
    out: str
    written: int = 0
    videos: set[str] = dataclasses.field(default_factory=set)
    skipped: Counter = dataclasses.field(default_factory=Counter)  # kind -> questions
    found_elsewhere: int = 0  # questions whose video was found by its name outside the benchmark's layout
    without_subtitles: int | None = None  # with subtitles: questions whose video has none

    def summary(self) -> str:
        lines = [f"{self.benchmark}: wrote {self.written} questions about {len(self.videos)} videos to {self.out}"]
        kinds = ", ".join(f"{kind} {count}" for kind, count in sorted(self.skipped.items()))
        lines.append(f"skipped {sum(self.skipped.values())}" + (f" ({kinds})" if kinds else ""))
        if self.found_elsewhere:
            lines.append(f"{self.found_elsewhere} questions' videos found by file name outside the benchmark's layout")
        if self.without_subtitles is not None:
            lines.append(f"{self.without_subtitles} questions about a video without subtitles")
        return "\n".join(lines)


def _check_paths(
    benchmark: Benchmark, annotations: Path, videos: Path, out: Path, subtitles: Path | None, outside: bool
):
    if not annotations.exists():
        raise ConfigError(f"--annotations={annotations} does not exist; {benchmark.name} reads {benchmark.reads}")
    if not videos.is_dir():
        raise ConfigError(f"--videos={videos} is not a folder; {benchmark.name} reads {benchmark.reads}")
    if benchmark.subtitles and subtitles is None:
        raise ConfigError(f"{benchmark.name} needs --subtitles: {benchmark.reads}")
    if not benchmark.subtitles and subtitles is not None:
        raise ConfigError(
            f"{benchmark.name} takes no --subtitles (the setting with subtitles is {benchmark.name}_subtitles)"
        )
    if subtitles is not None and not subtitles.exists():
        raise ConfigError(f"--subtitles={subtitles} does not exist; {benchmark.name} reads {benchmark.reads}")
    folder = out.parent
    if not outside and not Path(os.path.abspath(videos)).is_relative_to(os.path.abspath(folder)):
        suggestion = Path(os.path.abspath(videos)).parent / f"{benchmark.name}.jsonl"
        raise ConfigError(
            f"--videos={videos} is not inside the manifest's folder {os.path.abspath(folder)}, and its paths may "
            f"not leave it: write the manifest beside the videos (e.g. --out={suggestion}), or pass "
            "--allow_outside_paths and read the manifest with --config.data.allow_outside_paths=True"
        )


def manifest_line(benchmark: Benchmark, question: Question, video: str) -> dict:
    """The manifest line of a question whose video is `video` (relative to the manifest's folder)."""
    line = {"id": question.id, "video": video, "question": question.question}
    if question.options:
        line["options"] = list(question.options)
    line["answer"] = question.answer
    line |= {key: value for key, value in (("start", question.start), ("end", question.end)) if value is not None}
    line |= {"family": question.family, "benchmark": benchmark.name, "group": benchmark.group}
    if question.subtitles is not None:
        line["subtitles"] = [[s.start, s.end, s.text] for s in question.subtitles]
    if question.duration is not None:
        line["duration"] = question.duration
    meta = {key: value for key, value in question.meta.items() if value is not None}
    return line | ({"meta": meta} if meta else {})


def convert(
    benchmark: Benchmark,
    annotations: str,
    videos: str,
    out: str,
    subtitles: str | None = None,
    allow_outside_paths: bool = False,
    strict: bool = False,
) -> Report:
    """Writes `out` (a JSONL manifest) from `benchmark`'s annotation file(s) `annotations` and its videos under
    `videos`, and returns what was written and skipped. ConfigError for unusable arguments, DataError for an
    unreadable annotation file or when no question can be used (or, with `strict`, at the first skip)."""
    annotations_path, videos_path, out_path = Path(annotations), Path(videos), Path(out)
    subtitles_path = None if subtitles is None else Path(subtitles)
    _check_paths(benchmark, annotations_path, videos_path, out_path, subtitles_path, allow_outside_paths)
    folder = VideoFolder(videos_path)
    manifest = os.path.abspath(out_path)
    relative = os.path.relpath(os.path.abspath(videos_path), os.path.dirname(manifest))
    report = Report(benchmark.name, out, without_subtitles=0 if benchmark.subtitles else None)
    skip = SkipCounter(strict, f"{benchmark.name} ({annotations})")
    lines: list[str] = []
    seen: set[str] = set()
    for question in benchmark.read(annotations_path, subtitles_path):
        if isinstance(question, DataError):
            skip(question)
            continue
        where = f"{benchmark.name} question {question.id}"
        try:
            found, elsewhere = folder.find(question.videos)
        except DataError as e:
            skip(DataError(f"{where}: {e}", e.kind))
            continue
        line = manifest_line(benchmark, question, posixpath.normpath(posixpath.join(relative, found)))
        text = json.dumps(line, ensure_ascii=False, default=str)
        try:
            entry = parse_line(text, where, manifest, allow_outside_paths)
            if entry.id in seen:
                raise DataError(f"{where}: the id is used twice", "duplicate id")
        except DataError as e:
            skip(e)
            continue
        seen.add(entry.id)
        lines.append(text)
        report.videos.add(found)
        report.found_elsewhere += elsewhere
        if question.subtitles is not None:
            report.without_subtitles += not entry.subtitles
    report.skipped, report.written = skip.counts, len(lines)
    if not lines:
        raise DataError(
            f"{benchmark.name}: no usable question in {annotations} (skipped: {dict(skip.counts)}); see the warnings "
            "above",
            "empty manifest",
        )
    out_path.parent.mkdir(parents=True, exist_ok=True)
    staging = out_path.with_name(out_path.name + ".partial")
    staging.write_text("\n".join(lines) + "\n", encoding="utf-8")
    os.replace(staging, out_path)
    return report
