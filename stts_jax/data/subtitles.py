"""Subtitle tracks of videos, and the subtitle text Molmo2 shows the model with the frames it sampled.

Molmo2 (`olmo/preprocessing/video_preprocessor.py`, `TokenIndexingVideoPreprocessor.__call__`, with the
default `subtitle_mode="frame_1"`) puts, after the last frame and before the user turn, "subtitle\\n" and one
line "{start:.1f} - {end:.1f} {text}\\n" per subtitle that overlaps [t - 1, t + 1] s of some sampled frame
time t, in the track's order; a video without subtitles gets nothing, not even the header. Tracks are keyed
by (start, end) there (`olmo/data/academic_video_datasets.py`), so a repeated span keeps its first place and
its last text (`by_span`). A track is written as `[[start, end, text], ...]` (seconds on the video's own time
line, as frame timestamps are): in a manifest line, and as JSON text in a stored or on-the-fly record
(`encode_track` / `decode_track`).
"""

from __future__ import annotations

import dataclasses
import json
import math
from collections.abc import Iterable, Sequence

SUBTITLE_WINDOW = 1.0  # seconds either side of a sampled frame (Molmo2's subtitle_mode "frame_1")


@dataclasses.dataclass(frozen=True)
class Subtitle:
    start: float  # seconds from the start of the video
    end: float
    text: str


Track = tuple[Subtitle, ...]


def by_span(subtitles: Iterable[Subtitle]) -> Track:
    """One subtitle per (start, end), as Molmo2's dict of spans holds them: the first place, the last text."""
    spans: dict[tuple[float, float], str] = {}
    for s in subtitles:
        spans[(s.start, s.end)] = s.text
    return tuple(Subtitle(start, end, text) for (start, end), text in spans.items())


def _seconds(value) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value) and value >= 0


def parse_track(value) -> Track:
    """`[[start, end, text], ...]` (seconds >= 0, end >= start, text a string) -> the track, by span; ValueError
    naming the first entry that is not one."""
    if not isinstance(value, list):
        raise ValueError(f"subtitles must be a list of [start, end, text], got {value!r}")
    subtitles = []
    for i, entry in enumerate(value):
        if not (isinstance(entry, list | tuple) and len(entry) == 3):
            raise ValueError(f"subtitle {i} must be [start, end, text], got {entry!r}")
        start, end, text = entry
        if not (_seconds(start) and _seconds(end) and end >= start and isinstance(text, str)):
            raise ValueError(
                f"subtitle {i} {entry!r}: start and end must be finite seconds >= 0 with end >= start, text a string"
            )
        subtitles.append(Subtitle(float(start), float(end), text))
    return by_span(subtitles)


def encode_track(subtitles: Sequence[Subtitle]) -> str:
    """A track as a record stores it: JSON `[[start, end, text], ...]` ("[]" for none); floats round-trip exactly."""
    return json.dumps([[s.start, s.end, s.text] for s in subtitles], ensure_ascii=False)


def decode_track(text: str | bytes) -> Track:
    """`encode_track`'s inverse."""
    return parse_track(json.loads(text))


def subtitle_text(subtitles: Sequence[Subtitle], frame_times: Sequence[float]) -> str:
    """What Molmo2 shows of a track for frames sampled at `frame_times` (seconds): "subtitle\\n" and the lines
    near a frame; "" for an empty track."""
    if not subtitles:
        return ""
    lines = [
        f"{s.start:.1f} - {s.end:.1f} {s.text}\n"
        for s in subtitles
        if any(not (s.end < t - SUBTITLE_WINDOW or t + SUBTITLE_WINDOW < s.start) for t in frame_times)
    ]
    return "subtitle\n" + "".join(lines)
