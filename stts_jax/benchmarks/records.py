"""What a benchmark's annotation files become (a `Question` each), and reading those files as they are
published: Parquet, JSON, JSON Lines, CSV; options written into the question text; answers given as a letter,
an index or the option's words. Every problem with one record is a DataError whose `kind` the conversion
counts; a file that cannot be read at all is a DataError too, and stops the conversion."""

from __future__ import annotations

import csv
import dataclasses
import json
import re
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path

import pyarrow.parquet as pq

from stts_jax.benchmarks.answers import LABELS
from stts_jax.data.subtitles import Track
from stts_jax.errors import DataError


@dataclasses.dataclass(frozen=True)
class Question:
    """One question of a benchmark, before its video is looked up."""

    id: str  # the benchmark's own question id
    videos: tuple[str, ...]  # where the video may lie under --videos (relative, posix), most likely first
    question: str
    options: tuple[str, ...]  # empty for a free-text answer
    answer: int | str  # an index into `options`, or the answer's text without options
    family: str  # the benchmark's task / category, for per-family accuracy
    duration: str | None = None  # the benchmark's duration group (Video-MME short/medium/long, ...)
    start: float | None = None  # seconds: the clip of the video the question is about
    end: float | None = None
    subtitles: Track | None = None  # the video's track (None: the benchmark has none here)
    meta: dict = dataclasses.field(default_factory=dict)  # the benchmark's other fields, kept for analysis


# A benchmark's reader: (annotations, subtitles or None) -> each record as a Question, or as the DataError that
# says why it cannot be one.
Reader = Callable[[Path, Path | None], Iterator[Question | DataError]]


@dataclasses.dataclass(frozen=True)
class Benchmark:
    name: str
    group: str  # "short" or "long": the paper's Table 1 averages
    reads: str  # the published files it reads, for --help
    read: Reader
    subtitles: bool = False  # the with-subtitles setting (--subtitles required)


def read_rows(path: Path) -> list | dict:
    """A whole annotation file: Parquet (as a list of row dicts), CSV (row dicts of strings), JSON, JSON Lines."""
    suffix = path.suffix.lower()
    try:
        if suffix == ".parquet":
            return pq.read_table(path).to_pylist()
        if suffix == ".csv":
            with path.open(newline="", encoding="utf-8-sig") as file:
                return list(csv.DictReader(file))
        text = path.read_text(encoding="utf-8-sig")
        if suffix == ".jsonl":
            return [json.loads(line) for line in text.splitlines() if line.strip()]
        if suffix == ".json":
            return json.loads(text)
    except (OSError, ValueError) as e:  # pyarrow's errors are OSError / ValueError subclasses
        raise DataError(f"{path}: cannot read it ({type(e).__name__}: {e})", "unreadable annotations") from e
    raise DataError(
        f"{path}: a {suffix or 'suffix-less'} file; annotations are .parquet, .json, .jsonl or .csv",
        "unreadable annotations",
    )


def table(path: Path) -> list[dict]:
    """A file that holds one record per row (Parquet, CSV, JSON Lines, or a JSON list)."""
    rows = read_rows(path)
    if not isinstance(rows, list):
        raise DataError(f"{path}: expected a list of records, found a {type(rows).__name__}", "unreadable annotations")
    return rows


def mapping(path: Path) -> dict:
    """A JSON file that holds one object keyed by id."""
    data = read_rows(path)
    if not isinstance(data, dict):
        raise DataError(
            f"{path}: expected a JSON object keyed by id, found a {type(data).__name__}", "unreadable annotations"
        )
    return data


def files_in(path: Path, suffixes: Sequence[str]) -> list[Path]:
    """`path` itself, or the files with one of `suffixes` directly in the folder `path` (sorted)."""
    if path.is_dir():
        found = sorted(p for p in path.iterdir() if p.is_file() and p.suffix.lower() in suffixes)
        if not found:
            raise DataError(f"{path}: no {' / '.join(suffixes)} file in this folder", "unreadable annotations")
        return found
    return [path]


def nested(rows: Sequence, key: str, where: str) -> Iterator[tuple | DataError]:
    """(line, row, item) for each item of the list row[key] of each row (lines count from 1); a row without
    that list as its DataError."""
    for line, row in enumerate(rows, start=1):
        items = row.get(key) if isinstance(row, dict) else None
        if not isinstance(items, list):
            yield DataError(f"{where} line {line}: no {key!r} list", "missing field")
            continue
        for item in items:
            yield line, row, item


def each(records: Iterable, make: Callable[..., Question]) -> Iterator[Question | DataError]:
    """make(*record) for every record (a tuple of arguments), a failed one yielded as its DataError; a record
    that is already a DataError passes through."""
    for record in records:
        if isinstance(record, DataError):
            yield record
            continue
        try:
            yield make(*record)
        except DataError as e:
            yield e


def located(file: str, index: int, row, key: str) -> str:
    """Where a record is, for messages: "file row 3 (question q7)" (its id when it has one)."""
    named = row.get(key) if isinstance(row, dict) else None
    return f"{file} row {index}" + (f" (question {named})" if named not in (None, "") else "")


def field(row, key: str, where: str):
    """row[key]; DataError "missing field" naming the field and the record when it is absent or null."""
    value = row.get(key) if isinstance(row, dict) else None
    if value is None:
        raise DataError(f"{where}: no {key!r} field", "missing field")
    return value


def text_of(row, key: str, where: str) -> str:
    value = field(row, key, where)
    if not isinstance(value, str | int | float) or isinstance(value, bool) or not str(value).strip():
        raise DataError(f"{where}: {key!r} must be non-empty text, got {value!r}", "malformed record")
    return str(value).strip()


def texts_of(row, key: str, where: str) -> tuple[str, ...]:
    value = field(row, key, where)
    if isinstance(value, str) or not all(isinstance(v, str) and v.strip() for v in value):
        raise DataError(f"{where}: {key!r} must be a list of non-empty strings, got {value!r}", "malformed record")
    return tuple(v.strip() for v in value)


def index_answer(value, count: int, where: str) -> int:
    """An answer given as an index (an int, or digits as CSV and some Parquet files write it)."""
    if isinstance(value, str) and value.strip().lstrip("-").isdigit():
        value = int(value)
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value < count:
        raise DataError(f"{where}: answer {value!r} is not an index into its {count} options", "unknown answer")
    return value


def letter_answer(value, count: int, where: str) -> int:
    """An answer given as an option's letter ("B", "(B)", "B.")."""
    letter = re.fullmatch(r"\s*\(?([A-Za-z])\)?[.:]?\s*", str(value))
    index = LABELS.find(letter.group(1).upper()) if letter else -1
    if not 0 <= index < count:
        raise DataError(f"{where}: answer {value!r} is not the letter of one of its {count} options", "unknown answer")
    return index


def words_answer(value, options: Sequence[str], where: str) -> int:
    """An answer given as the option's words (exactly one option must have them)."""
    matches = [i for i, option in enumerate(options) if option == str(value).strip()]
    if not matches:
        raise DataError(f"{where}: answer {value!r} is none of its options {list(options)}", "unknown answer")
    if len(matches) > 1:
        raise DataError(f"{where}: answer {value!r} is options {matches} (repeated option)", "ambiguous answer")
    return matches[0]


_LABELLED = re.compile(r"^\s*(?:\(([A-Z])\)|([A-Z])[.):])\s*(.*?)\s*$", re.DOTALL)


def strip_labels(options: Sequence[str], where: str) -> tuple[str, ...]:
    """Options written with their letters ("A. text", "(A) text", "A) text") -> the texts; options without
    letters as they are. Letters out of order are an error (the answer letter would name another option)."""
    matches = [_LABELLED.match(o) for o in options]
    if not any(matches):
        return tuple(options)
    labels = [next(g for g in m.groups()[:2] if g) if m else None for m in matches]
    if labels != list(LABELS[: len(options)]) or not all(m.group(3) for m in matches):
        raise DataError(
            f"{where}: options {list(options)} are not lettered A, B, C, ... in order", "unparsable options"
        )
    return tuple(m.group(3) for m in matches)


def inline_options(text: str, pattern: re.Pattern, where: str) -> tuple[str, tuple[str, ...], tuple[str, ...]]:
    """A question with its options on lines of their own -> (question, option labels, option texts). `pattern`
    matches an option line with groups (label, text); lines before the first option are the question, a line
    after an option continues it."""
    question, labels, options = [], [], []
    for line in text.replace("\r\n", "\n").split("\n"):
        option = pattern.match(line.strip())
        if option:
            labels.append(option.group(1))
            options.append(option.group(2).strip())
        elif options and line.strip():
            options[-1] = f"{options[-1]} {line.strip()}"
        elif line.strip():
            question.append(line.strip())
    if len(options) < 2 or not question or not all(options):
        raise DataError(f"{where}: cannot split {text!r} into a question and its options", "unparsable options")
    return "\n".join(question), tuple(labels), tuple(options)


def lettered(labels: Sequence[str], where: str) -> None:
    """Option labels must be A, B, C, ... in order, or an answer letter would name another option."""
    if list(labels) != list(LABELS[: len(labels)]):
        raise DataError(
            f"{where}: options are labelled {list(labels)}, not A, B, C, ... in order", "unparsable options"
        )


def seconds(value, key: str, where: str) -> float | None:
    """A time in seconds (None stays None)."""
    if value is None:
        return None
    try:
        return float(value)
    except (TypeError, ValueError) as e:
        raise DataError(f"{where}: {key} {value!r} is not a number of seconds", "malformed record") from e
