"""Readers of the short-video benchmarks' published annotation files: NExT-QA, PerceptionTest, MVBench, TOMATO,
MotionBench, TempCompass. Each docstring names the files it reads and the evaluation code whose reading it
follows (Molmo2: allenai/molmo2 `olmo/data/academic_video_datasets.py`; lmms-eval: `lmms_eval/tasks/<name>/`)."""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Iterator
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
    mapping,
    nested,
    seconds,
    table,
    text_of,
    texts_of,
    words_answer,
)
from stts_jax.errors import DataError

NEXTQA_FAMILIES = {"C": "causal", "T": "temporal", "D": "descriptive"}  # first letter of `type` (CW, TN, DL, ...)
NEXTQA_VIDEO_MAP = "map_vid_vidorID.json"  # official release: video id -> "<folder>/<vidorID>"


def nextqa(annotations: Path, subtitles: Path | None) -> Iterator[Question | DataError]:
    """NExT-QA multiple choice (5 options): lmms-eval/NExTQA's `MC/test-00000-of-00001.parquet` (what Molmo2's
    `NeXTQA` test split and lmms-eval's `nextqa_mc_test` read) or the official `val.csv` / `test.csv`
    (doc-doc/NExT-QA); columns video, question, answer (an index), qid, type, a0..a4. Videos: `<video>.mp4`
    under --videos (the flat NExTVideo/ folder of lmms-eval and Molmo2) or, with the official
    `map_vid_vidorID.json` beside the annotation file, `<folder>/<vidorID>.mp4` (the official NExTVideo/ tree)."""
    map_file = annotations.parent / NEXTQA_VIDEO_MAP
    video_map = mapping(map_file) if map_file.exists() else {}

    def make(row_index: int, row: dict) -> Question:
        where = located(annotations.name, row_index, row, "video")
        video = text_of(row, "video", where)
        kind = str(row.get("type") or "")
        qid = row.get("qid")
        mapped = (f"{video_map[video]}.mp4",) if video in video_map else ()
        return Question(
            id=f"{video}_{qid if qid not in (None, '') else row_index}",
            videos=(*mapped, f"{video}.mp4"),
            question=text_of(row, "question", where),
            options=tuple(text_of(row, f"a{i}", where) for i in range(5)),
            answer=index_answer(field(row, "answer", where), 5, where),
            family=NEXTQA_FAMILIES.get(kind[:1], kind or "all"),
            meta={"type": kind},
        )

    return each(enumerate(table(annotations)), make)


def perceptiontest(annotations: Path, subtitles: Path | None) -> Iterator[Question | DataError]:
    """PerceptionTest multiple choice (3 options): lmms-eval/PerceptionTest_Val's
    `mc_question_val/validation-00000-of-00001.parquet` (what Molmo2's `PerceptionTest` validation split and
    lmms-eval's `perceptiontest_val_mc` read; columns video_name, question, question_id, options, answer_id,
    area, reasoning, tag) or the official JSON (google-deepmind/perception_test `all_valid.json`: {video_id:
    {"mc_question": [{"id", "question", "options", "answer_id", "area", "reasoning", "tag"}]}}; question id
    `<video_id>_<id>`). Videos: `<video_name>.mp4`. The test split's answers are not public: "no answer"."""

    def make(where: str, row: dict, question_id: str | None = None, video: str | None = None) -> Question:
        options = texts_of(row, "options", where)
        if row.get("answer_id") in (None, ""):
            raise DataError(f"{where}: no answer_id (PerceptionTest's test answers are not public)", "no answer")
        return Question(
            id=question_id or text_of(row, "question_id", where),
            videos=(f"{video or text_of(row, 'video_name', where)}.mp4",),
            question=text_of(row, "question", where),
            options=options,
            answer=index_answer(row["answer_id"], len(options), where),
            family=str(row.get("area") or "all"),
            meta={"reasoning": row.get("reasoning"), "tag": row.get("tag")},
        )

    if annotations.suffix.lower() != ".json":
        rows = enumerate(table(annotations))
        return each(((located(annotations.name, i, row, "question_id"), row) for i, row in rows), make)
    records = [
        (f"{annotations.name} {video} question {item.get('id')}", item, f"{video}_{item.get('id')}", video)
        for video, entry in mapping(annotations).items()
        for item in (entry.get("mc_question") or [] if isinstance(entry, dict) else [])
        if isinstance(item, dict)
    ]
    return each(records, make)


# json/<stem>.json -> (task, its videos' folder under video/), as OpenGVLab/MVBench publishes them (Molmo2's
# `MVBench.data_list`); data0613/ holds some of them until moved up, as Molmo2's download does.
MVBENCH_TASKS = {
    "action_sequence": ("Action Sequence", "star/Charades_v1_480"),
    "action_prediction": ("Action Prediction", "star/Charades_v1_480"),
    "action_antonym": ("Action Antonym", "ssv2_video"),
    "fine_grained_action": ("Fine-grained Action", "Moments_in_Time_Raw/videos"),
    "unexpected_action": ("Unexpected Action", "FunQA_test/test"),
    "object_existence": ("Object Existence", "clevrer/video_validation"),
    "object_interaction": ("Object Interaction", "star/Charades_v1_480"),
    "object_shuffle": ("Object Shuffle", "perception/videos"),
    "moving_direction": ("Moving Direction", "clevrer/video_validation"),
    "action_localization": ("Action Localization", "sta/sta_video"),
    "scene_transition": ("Scene Transition", "scene_qa/video"),
    "action_count": ("Action Count", "perception/videos"),
    "moving_count": ("Moving Count", "clevrer/video_validation"),
    "moving_attribute": ("Moving Attribute", "clevrer/video_validation"),
    "state_change": ("State Change", "perception/videos"),
    "fine_grained_pose": ("Fine-grained Pose", "nturgbd"),
    "character_order": ("Character Order", "perception/videos"),
    "egocentric_navigation": ("Egocentric Navigation", "vlnqa"),
    "episodic_reasoning": ("Episodic Reasoning", "tvqa/frames_fps3_hq"),
    "counterfactual_inference": ("Counterfactual Inference", "clevrer/video_validation"),
}
MVBENCH_FRAME_FOLDERS = "episodic_reasoning"  # its videos are folders of frames at 3 fps; Molmo2 encodes video.mp4


def mvbench(annotations: Path, subtitles: Path | None) -> Iterator[Question | DataError]:
    """MVBench (OpenGVLab/MVBench `json/<task>.json`, 20 tasks; what Molmo2's `MVBench` and lmms-eval's
    `mvbench_<task>` read): lists of {"video", "question", "candidates", "answer" (the option's words), "start",
    "end" (seconds, the clip asked about, for five tasks)}; question id `<task>_<index>`. Videos under
    --videos (MVBench's video/ folder) in each task's folder (MVBENCH_TASKS). Episodic reasoning's videos are
    folders of frames: encode each to `<folder>/video.mp4` at 3 fps first, as Molmo2 does."""

    def make(task: str, index: int, row: dict) -> Question:
        where = f"{task}.json item {index}"
        if task not in MVBENCH_TASKS:
            raise DataError(f"{where}: {task!r} is not one of MVBench's tasks {sorted(MVBENCH_TASKS)}", "unknown task")
        name, folder = MVBENCH_TASKS[task]
        video = text_of(row, "video", where)
        options = texts_of(row, "candidates", where)
        if task == MVBENCH_FRAME_FOLDERS:
            videos = (f"{folder}/{video}/video.mp4", f"{folder}/{video}")
        else:
            videos = (f"{folder}/{video}", f"data0613/{folder}/{video}")
        return Question(
            id=f"{task}_{index}",
            videos=videos,
            question=text_of(row, "question", where),
            options=options,
            answer=words_answer(field(row, "answer", where), options, where),
            family=name,
            start=seconds(row.get("start"), "start", where),
            end=seconds(row.get("end"), "end", where),
        )

    records = [(path.stem, i, row) for path in files_in(annotations, (".json",)) for i, row in enumerate(table(path))]
    return each(records, make)


def tomato(annotations: Path, subtitles: Path | None) -> Iterator[Question | DataError]:
    """TOMATO (yale-nlp/TOMATO `data/<reasoning type>.json`, the six files Molmo2's `Tomato` reads; lmms-eval's
    `tomato` reads the same questions from lmms-eval/TOMATO): {id: {"question", "options", "answer" (an index),
    "key", "demonstration_type", "motion_type"}}; question id `<reasoning type>_<id>`. Videos:
    `<demonstration_type>/<key>.mp4` under --videos (TOMATO's videos/ folder)."""

    def make(kind: str, key: str, row: dict) -> Question:
        where = f"{kind}.json question {key}"
        options = texts_of(row, "options", where)
        demonstration = text_of(row, "demonstration_type", where)
        return Question(
            id=f"{kind}_{key}",
            videos=(f"{demonstration}/{text_of(row, 'key', where)}.mp4",),
            question=text_of(row, "question", where),
            options=options,
            answer=index_answer(field(row, "answer", where), len(options), where),
            family=kind,
            meta={"demonstration_type": demonstration, "motion_type": row.get("motion_type")},
        )

    records = [
        (path.stem, key, row) for path in files_in(annotations, (".json",)) for key, row in mapping(path).items()
    ]
    return each(records, make)


MOTIONBENCH_OPTION = re.compile(r"^([A-F])[.):]\s*(.*)$")  # lmms-eval motionbench/utils.py's option lines


def motionbench(annotations: Path, subtitles: Path | None) -> Iterator[Question | DataError]:
    """MotionBench (THUDM/MotionBench `video_info.meta.jsonl`, what Molmo2's `MotionBench` and lmms-eval's
    `motionbench_full` read): a line per video {"key", "video_path", "question_type", "video_type", "qa": [{"uid",
    "question" (its options on lines "A. ..."), "answer" (a letter; "NA" in the test part, whose answers are
    not public)}]}; question id `uid`. Videos: `video_path` under --videos, or under its self-collected/ or
    public-dataset/ folder (Molmo2's layout)."""

    def make(line: int, video: dict, qa: dict) -> Question:
        where = f"{annotations.name} line {line} question {qa.get('uid') if isinstance(qa, dict) else qa!r}"
        answer = text_of(qa, "answer", where)
        if answer.upper() == "NA":
            raise DataError(f"{where}: answer NA (MotionBench's test part; its answers are not public)", "no answer")
        question, labels, options = inline_options(text_of(qa, "question", where), MOTIONBENCH_OPTION, where)
        lettered(labels, where)
        path = text_of(video, "video_path", where)
        return Question(
            id=text_of(qa, "uid", where),
            videos=(path, f"self-collected/{path}", f"public-dataset/{path}"),
            question=question,
            options=options,
            answer=letter_answer(answer, len(options), where),
            family=str(video.get("question_type") or "all"),
            meta={"key": video.get("key"), "video_type": video.get("video_type")},
        )

    return each(nested(table(annotations), "qa", annotations.name), make)


TEMPCOMPASS_TASKS = ("multi-choice", "yes_no", "caption_matching")  # Molmo2's TempCompassEval task "internal"
TEMPCOMPASS_JUDGED = ("captioning",)  # scored by an LLM judge: not converted
TEMPCOMPASS_CHOICE = re.compile(r"^([A-Z])[.)]\s*(.*)$")
TEMPCOMPASS_CAPTION = re.compile(r"^(?:Option|Sentence|Caption)\s+([A-Z0-9]+)\s*:\s*(.*)$", re.IGNORECASE)


def _tempcompass_task(path: Path) -> str:
    for name in (path.stem, *reversed(path.parent.parts)):
        if name in TEMPCOMPASS_TASKS + TEMPCOMPASS_JUDGED:
            return name
    raise DataError(
        f"{path}: which TempCompass task is this? Keep the published names: questions/<task>.json or "
        f"<task>/test-*.parquet, task one of {TEMPCOMPASS_TASKS + TEMPCOMPASS_JUDGED}",
        "unreadable annotations",
    )


def _chosen(answer: str, pattern: re.Pattern, labels: tuple[str, ...], options: tuple[str, ...], where: str) -> int:
    """The option a TempCompass answer names by its label and words ("B. fast", "Caption A: ..."); they must agree."""
    named = pattern.match(answer)
    label = named.group(1) if named else answer.strip().rstrip(".")
    if label not in labels:
        raise DataError(f"{where}: answer {answer!r} names none of the options {list(labels)}", "unknown answer")
    index = labels.index(label)
    if named and named.group(2).strip().lower() != options[index].lower():
        raise DataError(
            f"{where}: answer {answer!r} disagrees with option {label} {options[index]!r}", "ambiguous answer"
        )
    return index


def tempcompass(annotations: Path, subtitles: Path | None) -> Iterator[Question | DataError]:
    """TempCompass, the three tasks Molmo2 averages (`TempCompassEval`, task "internal"): llyx97/TempCompass
    `questions/<task>.json` ({video_id: {dimension: [{"question", "answer"}]}}) or lmms-eval/TempCompass's
    `<task>/test-*.parquet` (columns video_id, dim, question, answer, what lmms-eval's `tempcompass_*` read);
    question id `<task>/<video_id>/<dimension>/<index>`. Multi-choice ("A. ..." lines, answer "B. words") and
    caption matching ("Caption A: ..." / "Sentence 1: ..." lines, answer the whole line) become options, the
    answer's label and words checked against each other; yes_no keeps its free-text answer "yes" / "no"
    (score it with `answers.extract_yes_no`, TempCompass' rule); captioning needs an LLM judge: skipped.
    Videos: `<video_id>.mp4` under --videos (TempCompass' videos/)."""

    def make(task: str, video: str, dimension: str, index: int, row: dict) -> Question:
        where = f"{task} {video} {dimension} #{index}"
        if task in TEMPCOMPASS_JUDGED:
            raise DataError(f"{where}: TempCompass {task} is scored by an LLM judge; not converted", "unsupported task")
        text, answer = text_of(row, "question", where), text_of(row, "answer", where)
        common = {"id": f"{task}/{video}/{dimension}/{index}", "videos": (f"{video}.mp4",), "family": task}
        if task == "yes_no":
            if answer.lower() not in ("yes", "no"):
                raise DataError(f"{where}: answer {answer!r} is neither yes nor no", "unknown answer")
            return Question(question=text, options=(), answer=answer.lower(), meta={"dim": dimension}, **common)
        pattern = TEMPCOMPASS_CHOICE if task == "multi-choice" else TEMPCOMPASS_CAPTION
        question, labels, options = inline_options(text, pattern, where)
        if task == "multi-choice":
            lettered(labels, where)
        chosen = _chosen(answer, pattern, labels, options, where)
        return Question(question=question, options=options, answer=chosen, meta={"dim": dimension}, **common)

    def records(path: Path) -> Iterator[tuple]:
        task = _tempcompass_task(path)
        if path.suffix.lower() == ".parquet":
            seen: Counter = Counter()
            for row in table(path):
                video, dimension = str(row.get("video_id")), str(row.get("dim"))
                yield task, video, dimension, seen[video, dimension], row
                seen[video, dimension] += 1
            return
        for video, dimensions in mapping(path).items():
            for dimension, rows in dimensions.items() if isinstance(dimensions, dict) else ():
                for index, row in enumerate(rows if isinstance(rows, list) else ()):
                    yield task, video, dimension, index, row

    if annotations.is_dir():
        paths = sorted(annotations.glob("*.json")) + sorted(annotations.glob("*/*.parquet"))
        if not paths:
            raise DataError(
                f"{annotations}: no questions/<task>.json or <task>/*.parquet here", "unreadable annotations"
            )
    else:
        paths = [annotations]
    return each((record for path in paths for record in records(path)), make)
