"""Subtitle tracks as the long-video benchmarks ship them (SubRip files, Molmo2's Video-MME JSON, LongVideoBench's
JSON), read into the tracks a manifest line carries (`data.subtitles`: the `Subtitle` type, Molmo2's keying by
span, and the text the prompt shows near the sampled frames).
"""

from __future__ import annotations

import json
import re
from pathlib import Path

from stts_jax.data.subtitles import Subtitle, Track, by_span
from stts_jax.errors import DataError

_SRT_TIME = re.compile(r"(\d+):(\d+):(\d+)[,.](\d+)\s*-->\s*(\d+):(\d+):(\d+)[,.](\d+)")
_MARKUP = re.compile(r"<[^>]+>")  # Video-MME's .srt wrap each line in <font color="white" size=".72c">


def _seconds(h: str, m: str, s: str, fraction: str) -> float:
    return int(h) * 3600 + int(m) * 60 + int(s) + int(fraction) / 10 ** len(fraction)


def read_srt(path: Path) -> Track:
    """A SubRip file (Video-MME's `subtitle/<videoID>.srt`): blocks of an optional counter, a time line and
    text lines (joined by spaces, markup removed, as lmms-eval's `videomme/utils.py` reads them)."""
    try:
        content = path.read_text(encoding="utf-8-sig", errors="replace")
    except OSError as e:
        raise DataError(f"{path}: cannot read the subtitles ({e})", "unreadable subtitles") from e
    subtitles = []
    for block in re.split(r"\n\s*\n", content.replace("\r\n", "\n").replace("\r", "\n")):
        lines = [line.strip() for line in block.strip().split("\n")]
        times = next(((i, _SRT_TIME.search(line)) for i, line in enumerate(lines) if _SRT_TIME.search(line)), None)
        if times is None:
            continue
        at, match = times
        text = " ".join(_MARKUP.sub("", line).strip() for line in lines[at + 1 :]).strip()
        if text:
            g = match.groups()
            subtitles.append(Subtitle(_seconds(*g[:4]), _seconds(*g[4:]), text))
    return by_span(subtitles)


def read_molmo2_videomme(path: Path) -> dict[str, Track]:
    """Molmo2's `subtitles.json` for Video-MME (Hugging Face `allenai/Molmo2-VideoMME`): {videoID: {index:
    {"start", "end", "text"}}} -> {videoID: track}."""
    try:
        tracks = json.loads(path.read_text(encoding="utf-8"))
        return {
            video: by_span(
                Subtitle(float(entries[i]["start"]), float(entries[i]["end"]), str(entries[i]["text"]))
                for i in sorted(entries, key=int)
            )
            for video, entries in tracks.items()
        }
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as e:
        raise DataError(
            f"{path}: not Molmo2's Video-MME subtitles.json ({type(e).__name__}: {e}); pass the folder of "
            "<videoID>.srt files or that file",
            "unreadable subtitles",
        ) from e


def _clock(text: str) -> float:
    h, m, s = text.split(":")
    return int(h) * 3600 + int(m) * 60 + float(s)


def read_longvideobench(path: Path, offset: float, duration: float) -> Track:
    """A LongVideoBench subtitle file (`subtitles/<subtitle_path>`): a list of {"timestamp": [start, end],
    "text"} or {"start": "HH:MM:SS.mmm", "end", "line"} on the source video's clock, cut to the question's
    video [offset, offset + duration] and shifted to start at 0, as Molmo2's `LongVideoBench.load` does (an
    open end runs to the end of the video)."""
    try:
        entries = json.loads(path.read_text(encoding="utf-8"))
        subtitles = []
        for entry in entries:
            if "timestamp" in entry:
                start, end = entry["timestamp"]
                end = end if isinstance(end, int | float) else offset + duration
                text = entry["text"]
            else:
                start, end, text = _clock(entry["start"]), _clock(entry["end"]), entry["line"]
            if end < offset or start > offset + duration:
                continue
            subtitles.append(Subtitle(max(float(start) - offset, 0.0), float(end) - offset, str(text).strip()))
    except OSError as e:
        raise DataError(f"{path}: cannot read the subtitles ({e})", "missing subtitles") from e
    except (ValueError, KeyError, TypeError, AttributeError) as e:
        raise DataError(f"{path}: not a LongVideoBench subtitle file ({type(e).__name__}: {e})", "bad subtitles") from e
    return by_span(subtitles)
