"""Readers of the long-video benchmarks' published annotation files: Video-MME, LongVideoBench (both with or
without subtitles), MLVU, LVBench, VideoEval-Pro. Each docstring names the files it reads and the evaluation
code whose reading it follows (Molmo2: allenai/molmo2 `olmo/data/academic_video_datasets.py`; lmms-eval:
`lmms_eval/tasks/<name>/`)."""

from __future__ import annotations

import functools
import re
from collections.abc import Callable, Iterator
from pathlib import Path

from stts_jax.benchmarks.records import (
    Question,
    each,
    field,
    files_in,
    index_answer,
    inline_options,
    letter_answer,
    lettered,
    located,
    nested,
    strip_labels,
    table,
    text_of,
    texts_of,
    words_answer,
)
from stts_jax.benchmarks.subtitles import read_longvideobench, read_molmo2_videomme, read_srt
from stts_jax.data.subtitles import Track
from stts_jax.errors import DataError


def _videomme_tracks(subtitles: Path) -> Callable[[str], Track]:
    """videoID -> its track (empty: the video has none) from Video-MME's subtitle/ folder of <videoID>.srt or
    Molmo2's subtitles.json."""
    if subtitles.is_dir():
        return functools.cache(
            lambda video: read_srt(subtitles / f"{video}.srt") if (subtitles / f"{video}.srt").exists() else ()
        )
    tracks = read_molmo2_videomme(subtitles)
    return lambda video: tracks.get(video, ())


def videomme(annotations: Path, subtitles: Path | None) -> Iterator[Question | DataError]:
    """Video-MME (lmms-eval/Video-MME `videomme/test-00000-of-00001.parquet`, what Molmo2's `VideoMME` and
    lmms-eval's `videomme` read): video_id, duration (short / medium / long), domain, sub_category, videoID,
    question_id, task_type, question, options ("A. ..."), answer (a letter); question id `question_id`.
    Videos: `<videoID>.mp4` (or .MP4 / .mkv, as lmms-eval looks) under --videos (Video-MME's data/). With
    subtitles, --subtitles is Video-MME's subtitle/ folder of `<videoID>.srt` or Molmo2's own subtitles.json
    (allenai/Molmo2-VideoMME); a video without subtitles gets none, as in Molmo2."""
    tracks = _videomme_tracks(subtitles) if subtitles is not None else None

    def make(index: int, row: dict) -> Question:
        where = located(annotations.name, index, row, "question_id")
        video = text_of(row, "videoID", where)
        options = strip_labels(texts_of(row, "options", where), where)
        return Question(
            id=text_of(row, "question_id", where),
            videos=(f"{video}.mp4",),
            question=text_of(row, "question", where),
            options=options,
            answer=letter_answer(field(row, "answer", where), len(options), where),
            family=str(row.get("task_type") or "all"),
            duration=str(row.get("duration") or "") or None,
            subtitles=None if tracks is None else tracks(video),
            meta={
                "video_id": row.get("video_id"),
                "domain": row.get("domain"),
                "sub_category": row.get("sub_category"),
            },
        )

    return each(enumerate(table(annotations)), make)


def longvideobench(annotations: Path, subtitles: Path | None) -> Iterator[Question | DataError]:
    """LongVideoBench (longvideobench/LongVideoBench: `lvb_val.json`, what Molmo2's `LongVideoBench` reads, or
    `validation-00000-of-00001.parquet`, what lmms-eval's `longvideobench_val_v` reads): id, video_id,
    video_path, question, candidates (JSON) or option0..option4 with "N/A" for none (Parquet), correct_choice
    (an index; lvb_test_wo_gt.json has none: "no answer"), question_category, level, duration_group,
    duration, subtitle_path, starting_timestamp_for_subtitles; question id `id`. Videos: `video_path` under
    --videos (LongVideoBench's videos/). With subtitles, --subtitles is its subtitles/ folder; each question's
    track is cut to its video and shifted to start at 0, as Molmo2 does."""
    read_track = functools.cache(read_longvideobench)

    def make(index: int, row: dict) -> Question:
        where = located(annotations.name, index, row, "id")
        if "candidates" in row:
            options = texts_of(row, "candidates", where)
        else:
            options = tuple(
                str(row[f"option{i}"]).strip() for i in range(5) if row.get(f"option{i}") not in (None, "N/A")
            )
        if row.get("correct_choice") is None:
            raise DataError(f"{where}: no correct_choice (LongVideoBench's test answers are not public)", "no answer")
        track = None
        if subtitles is not None:
            offset = float(field(row, "starting_timestamp_for_subtitles", where))
            track = read_track(
                subtitles / text_of(row, "subtitle_path", where), offset, float(field(row, "duration", where))
            )
        group = row.get("duration_group")
        return Question(
            id=text_of(row, "id", where),
            videos=(text_of(row, "video_path", where),),
            question=text_of(row, "question", where),
            options=options,
            answer=index_answer(row["correct_choice"], len(options), where),
            family=str(row.get("question_category") or "all"),
            duration=None if group is None else str(group),
            subtitles=track,
            meta={"video_id": row.get("video_id"), "level": row.get("level")},
        )

    return each(enumerate(table(annotations)), make)


MLVU_OPEN_ENDED = ("sub_scene", "summary")  # the dev set's generation tasks: an LLM judge scores them
_MLVU_TASK_FILE = re.compile(r"^\d+_(.+)$")  # json/<n>_<task>.json


def mlvu(annotations: Path, subtitles: Path | None) -> Iterator[Question | DataError]:
    """MLVU multiple choice. The dev set (MLVU/MVLU `MLVU/json/<n>_<task>.json`: lists of {"video", "duration",
    "question", "candidates", "answer" (the option's words)}; what Molmo2's `MLVU` validation split and
    lmms-eval's `mlvu_dev` read; question id `<n>_<task>_<index>`; videos `<n>_<task>/<video>` under --videos =
    MLVU/video/); or the test set (MLVU/MLVU_Test `test-ground-truth/test_mcq_gt.json`, with "question_id"
    and "question_type"; videos `<video>` under --videos = MLVU_Test/video/). The dev set's two generation
    tasks (sub_scene, summary) are open-ended, scored by an LLM judge: skipped as "unsupported task"."""

    def make(file: str, index: int, row: dict) -> Question:
        where = located(f"{file}.json", index, row, "question_id")
        video = text_of(row, "video", where)
        if "question_id" in row:  # the test set
            task, question_id, videos = str(row.get("question_type") or "all"), str(row["question_id"]), (video,)
        else:
            named = _MLVU_TASK_FILE.match(file)
            task, question_id, videos = named.group(1) if named else file, f"{file}_{index}", (f"{file}/{video}",)
            if task in MLVU_OPEN_ENDED:
                raise DataError(
                    f"{where}: MLVU {task} is open-ended, scored by an LLM judge; not converted", "unsupported task"
                )
        options = texts_of(row, "candidates", where)
        return Question(
            id=question_id,
            videos=videos,
            question=text_of(row, "question", where),
            options=options,
            answer=words_answer(field(row, "answer", where), options, where),
            family=task,
            meta={"video_seconds": row.get("duration")},
        )

    records = [(path.stem, i, row) for path in files_in(annotations, (".json",)) for i, row in enumerate(table(path))]
    return each(records, make)


LVBENCH_OPTION = re.compile(r"^\(?([A-Z])[.)]\s*(.*)$")  # "(A) ...", as Molmo2's LVBench.parse_mcq_lines reads


def lvbench(annotations: Path, subtitles: Path | None) -> Iterator[Question | DataError]:
    """LVBench (zai-org/LVBench `video_info.meta.jsonl`, what Molmo2's `LVBench` reads): a line per video
    {"key", "type", "qa": [{"uid", "question" (its options on lines "(A) ..."), "answer" (a letter),
    "question_type" (a list), "time_reference"}]}; question id `uid`. Videos: `<key>.mp4` under --videos.
    Family: the video's type (a question may have several question types; they stay in `meta`)."""

    def make(line: int, video: dict, qa: dict) -> Question:
        where = f"{annotations.name} line {line} question {qa.get('uid') if isinstance(qa, dict) else qa!r}"
        question, labels, options = inline_options(text_of(qa, "question", where), LVBENCH_OPTION, where)
        lettered(labels, where)
        return Question(
            id=text_of(qa, "uid", where),
            videos=(f"{text_of(video, 'key', where)}.mp4",),
            question=question,
            options=options,
            answer=letter_answer(field(qa, "answer", where), len(options), where),
            family=str(video.get("type") or "all"),
            meta={"question_type": qa.get("question_type"), "time_reference": qa.get("time_reference")},
        )

    return each(nested(table(annotations), "qa", annotations.name), make)


def videoevalpro(annotations: Path, subtitles: Path | None) -> Iterator[Question | DataError]:
    """VideoEval-Pro's multiple-choice form (TIGER-Lab/VideoEval-Pro `data/test-00000-of-00001.parquet`: video,
    question, options, answer (a letter), answer_text, qa_type, qa_subtype, source), as Molmo2's
    `VideoEvalProMC` and lmms-eval's `videoevalpro_mcq` read it; question id `<row>_<video>` (Molmo2's).
    The benchmark's open-ended form (lmms-eval's `videoevalpro`: `answer_text` graded by GPT-4o) needs an LLM
    judge and is not converted. Videos: `video` under --videos (the archive's videos_filtered/ folder)."""

    def make(index: int, row: dict) -> Question:
        where = located(annotations.name, index, row, "video")
        video = text_of(row, "video", where)
        listed = field(row, "options", where)
        if isinstance(listed, str):  # one option per line (lmms-eval's videoevalpro utils.py reads both)
            row = row | {"options": [line for line in listed.split("\n") if line.strip()]}
        options = strip_labels(texts_of(row, "options", where), where)
        return Question(
            id=f"{index}_{video}",
            videos=(video,),
            question=text_of(row, "question", where),
            options=options,
            answer=letter_answer(field(row, "answer", where), len(options), where),
            family=str(row.get("qa_type") or "all"),
            meta={"qa_subtype": row.get("qa_subtype"), "source": row.get("source")},
        )

    return each(enumerate(table(annotations)), make)
