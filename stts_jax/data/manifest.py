"""Video-QA manifests: JSONL files of questions about video files, read into checked entries.

A line is `{"id", "video" (a path relative to the manifest's folder), "question", "options" (a list of
strings, optional), "answer" (an index into the options, or free text without them), "start"/"end"
(seconds, optional), "family" (optional), "subtitles" (optional: `[[start, end, text], ...]`, seconds on the
video's own time line like start/end; the prompt shows those near the sampled frames, `subtitles.py`)}`.
A line that cannot be used is skipped and counted by kind, with a warning naming `file:line` (`strict`
raises instead); nothing is guessed.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import posixpath
from collections import Counter

import numpy as np
from etils import epath

from stts_jax.data.subtitles import Track, encode_track, parse_track
from stts_jax.errors import DataError

log = logging.getLogger(__name__)

REQUIRED = ("id", "video", "question", "answer")
WARNINGS_SHOWN = 20  # skip warnings printed per manifest; the rest are counted only


@dataclasses.dataclass(frozen=True)
class Clip:
    """A stretch of one video file: `path` (resolved) from `start` to `end` seconds (None = its ends)."""

    path: str
    start: float | None = None
    end: float | None = None


@dataclasses.dataclass(frozen=True)
class Entry:
    """One usable manifest line; `answer` is -1 for a free-text answer."""

    where: str  # file:line
    id: str
    clip: Clip
    question: str
    options: tuple[str, ...]
    answer: int
    answer_text: str
    family: str
    subtitles: Track = ()  # by span (`subtitles.by_span`); empty: none

    def question_fields(self) -> dict:
        """The fields of a stored or on-the-fly record that come from the line (all but the video); the
        subtitles as JSON text (`subtitles.encode_track`)."""
        return {
            "id": self.id,
            "question": self.question,
            "options": list(self.options),
            "answer": np.int32(self.answer),
            "answer_text": self.answer_text,
            "family": self.family,
            "subtitles": encode_track(self.subtitles),
        }


@dataclasses.dataclass
class Manifest:
    path: str
    entries: list[Entry]
    skipped: Counter  # kind -> lines

    def clips(self) -> list[Clip]:
        """The distinct clips, in order of first use."""
        return list(dict.fromkeys(e.clip for e in self.entries))


def _reject_constant(name: str):
    raise ValueError(f"{name} is not a JSON number")


def _is_number(x) -> bool:
    return isinstance(x, int | float) and not isinstance(x, bool)


def resolve_video(manifest: str, video: str, allow_outside: bool) -> str:
    """`video` relative to the manifest's folder; paths that leave it (absolute, `..`, other schemes)
    only when `allow_outside`."""
    scheme, _, folder = str(manifest).rpartition("://")
    folder = posixpath.dirname(folder) if scheme else str(epath.Path(manifest).parent)
    absolute = "://" in video or video.startswith("/")
    resolved = video if absolute else posixpath.normpath(posixpath.join(folder, video))
    inside = not absolute and resolved.startswith(folder.rstrip("/") + "/")
    root = f"{scheme}://{folder}" if scheme else folder
    resolved = f"{scheme}://{resolved}" if scheme and not absolute else resolved
    if not inside and not allow_outside:
        raise DataError(
            f"video {video!r} is outside the manifest's folder {root}; move it there or set "
            "data.allow_outside_paths=True",
            "path outside manifest",
        )
    return resolved


def parse_line(line: str, where: str, manifest: str, allow_outside: bool = False) -> Entry:
    """One JSONL line -> an Entry (raises DataError naming `where` = file:line and the field)."""

    def bad(message: str, kind: str = "malformed line") -> DataError:
        return DataError(f"{where}: {message}", kind)

    try:
        record = json.loads(line, parse_constant=_reject_constant)
    except ValueError as e:
        raise bad(f"not valid JSON ({e})") from e
    if not isinstance(record, dict):
        raise bad("a line must be a JSON object")
    missing = [k for k in REQUIRED if k not in record]
    if missing:
        raise bad(f"missing field(s) {missing}; each line needs {list(REQUIRED)}", "missing field")
    example_id, video, question = record["id"], record["video"], record["question"]
    if isinstance(example_id, bool) or not isinstance(example_id, str | int) or str(example_id) == "":
        raise bad(f"id must be a non-empty string or an integer, got {example_id!r}")
    if not isinstance(video, str) or not video:
        raise bad(f"video must be a path (a non-empty string), got {video!r}")
    if not isinstance(question, str) or not question.strip():
        raise bad(f"question must be a non-empty string, got {question!r}")
    options = record.get("options")
    options = [] if options is None else options
    if not isinstance(options, list) or not all(isinstance(o, str) and o for o in options):
        raise bad(f"options must be a list of non-empty strings, got {options!r}")
    answer = record["answer"]
    if options:
        if isinstance(answer, bool) or not isinstance(answer, int) or not 0 <= answer < len(options):
            raise bad(f"answer {answer!r} is not an index into its {len(options)} options", "answer out of range")
    elif not isinstance(answer, str) or not answer.strip():
        raise bad(f"without options the answer must be non-empty text, got {answer!r}")
    start, end = record.get("start"), record.get("end")
    for key, value in (("start", start), ("end", end)):
        if value is not None and not (_is_number(value) and math.isfinite(value) and value >= 0):
            raise bad(f"{key} must be a finite number of seconds >= 0, got {value!r}")
    if start is not None and end is not None and end <= start:
        raise bad(f"end {end} must be after start {start}")
    family = record.get("family", "all")
    if not isinstance(family, str):
        raise bad(f"family must be a string, got {family!r}")
    try:
        subtitles = parse_track([] if record.get("subtitles") is None else record["subtitles"])
    except ValueError as e:
        raise bad(str(e), "bad subtitles") from e
    try:
        path = resolve_video(manifest, video, allow_outside)
    except DataError as e:
        raise bad(str(e), e.kind) from e
    return Entry(
        where=where,
        id=str(example_id),
        clip=Clip(path, None if start is None else float(start), None if end is None else float(end)),
        question=question,
        options=tuple(options),
        answer=answer if options else -1,
        answer_text=options[answer] if options else answer,
        family=family,
        subtitles=subtitles,
    )


class SkipCounter:
    """Counts unusable items by kind; warns for the first WARNINGS_SHOWN; `strict` raises instead."""

    def __init__(self, strict: bool, what: str):
        self.strict, self.what, self.counts = strict, what, Counter()

    def __call__(self, error: DataError) -> None:
        if self.strict:
            raise DataError(f"{error} (strict mode; strict=False skips and counts)", error.kind) from error
        self.counts[error.kind] += 1
        shown = sum(self.counts.values())
        if shown <= WARNINGS_SHOWN:
            log.warning("skipping %s", error)
        if shown == WARNINGS_SHOWN:
            log.warning("%s: further skips are counted, not shown", self.what)


def manifest_bytes(path: str) -> bytes:
    """The manifest file's content (local or gs://)."""
    try:
        return epath.Path(path).read_bytes()
    except OSError as e:
        raise DataError(f"{path}: cannot read the manifest ({e}); check data.*_manifest", "missing manifest") from e


def read_manifest(path: str, strict: bool = False, allow_outside: bool = False) -> Manifest:
    """All usable lines of a manifest (local or gs://): bad lines and repeated ids skipped and counted."""
    data = manifest_bytes(path)
    skip = SkipCounter(strict, path)
    entries, seen = [], {}
    for number, raw in enumerate(data.split(b"\n"), start=1):
        where = f"{path}:{number}"
        if number == 1 and raw.startswith(b"\xef\xbb\xbf"):  # a UTF-8 byte-order mark
            raw = raw[3:]
        if not raw.strip():
            continue
        try:
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as e:
                raise DataError(f"{where}: not UTF-8 text ({e.reason} at byte {e.start})", "malformed line") from e
            entry = parse_line(line, where, path, allow_outside)
            if entry.id in seen:
                raise DataError(f"{where}: id {entry.id!r} already used at line {seen[entry.id]}", "duplicate id")
        except DataError as e:
            skip(e)
            continue
        seen[entry.id] = number
        entries.append(entry)
    if not entries:
        raise DataError(
            f"{path}: no usable line (skipped: {dict(skip.counts) or 'the file is empty'}); see the warnings above",
            "empty manifest",
        )
    return Manifest(path, entries, skip.counts)
