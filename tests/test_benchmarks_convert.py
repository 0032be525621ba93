"""The benchmark converters: each benchmark's annotation files, written here in the shape it publishes them (file
type, field names, layout of its videos), become manifests the project's reader takes back with the right ids,
options, answers and videos; what cannot be used is counted by kind; subtitle tracks reach the manifest whole,
on the video's time line. And the multiple-choice answer extraction over many phrasings, the negatives included."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from test_video import write_video

from stts_jax.benchmarks.answers import extract_choice, extract_yes_no
from stts_jax.benchmarks.conversion import convert
from stts_jax.benchmarks.registry import BENCHMARKS
from stts_jax.data.manifest import read_manifest
from stts_jax.errors import ConfigError, DataError


@pytest.fixture(scope="module")
def clip(tmp_path_factory) -> Path:
    """A 10 s video at 1 frame per second (frames at 0, 1, ..., 9 s)."""
    path = tmp_path_factory.mktemp("clip") / "clip.mp4"
    write_video(path, np.arange(10.0), size=(32, 32), gop=5)
    return path


def place(clip: Path, root: Path, *paths: str) -> None:
    for path in paths:
        (root / path).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(clip, root / path)


def write_json(path: Path, data, lines: bool = False) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    text = "\n".join(json.dumps(x) for x in data) if lines else json.dumps(data, indent=1)
    path.write_text(text + "\n")
    return path


def write_parquet(path: Path, rows: list[dict]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.Table.from_pylist(rows), path)
    return path


# -- one builder per published format: (root, clip) -> (annotations, videos, subtitles, expected, skipped) ----------
# expected: {id: (options, answer, family)}; the manifest goes to root / "out.jsonl"


def nextqa_parquet(root, clip):
    videos = root / "NExTVideo"
    place(clip, videos, "100.mp4", "200.mp4")
    row = {
        "frame_count": 300,
        "width": 640,
        "height": 480,
        "a0": "cry ",
        "a1": "run",
        "a2": "eat",
        "a3": "sit",
        "a4": "nap",
    }
    rows = [
        row | {"video": 100, "question": "why did the boy run?", "answer": 2, "qid": 4, "type": "CW"},
        row | {"video": 200, "question": "what did he do next?", "answer": 0, "qid": 1, "type": "TN"},
        row | {"video": 300, "question": "where is he?", "answer": 1, "qid": 2, "type": "DL"},  # no such video
        row | {"video": 100, "question": "how many?", "answer": 7, "qid": 5, "type": "DC"},  # answer past the options
        row | {"video": 100, "question": "why again?", "answer": 1, "qid": 4, "type": "CW"},  # id 100_4 again
    ]
    options = ("cry", "run", "eat", "sit", "nap")
    expected = {"100_4": (options, 2, "causal"), "200_1": (options, 0, "temporal")}
    skipped = {"missing video": 1, "unknown answer": 1, "duplicate id": 1}
    return write_parquet(root / "MC" / "test-00000-of-00001.parquet", rows), videos, None, expected, skipped


def nextqa_csv(root, clip):
    videos = root / "NExTVideo"
    place(clip, videos, "1164/4010069381.mp4")
    write_json(root / "map_vid_vidorID.json", {"4010069381": "1164/4010069381"})
    header = "video,frame_count,width,height,question,answer,qid,type,a0,a1,a2,a3,a4\n"
    (root / "val.csv").write_text(header + "4010069381,300,640,480,what is the dog doing,3,0,DO,a,b,c,a dog ,e\n")
    return root / "val.csv", videos, None, {"4010069381_0": (("a", "b", "c", "a dog", "e"), 3, "descriptive")}, {}


def perceptiontest_parquet(root, clip):
    videos = root / "videos"
    place(clip, videos, "video_10.mp4")
    row = {"video_name": "video_10", "options": ["one", "two", "three"], "area": "physics", "reasoning": "counting"}
    rows = [
        row | {"question_id": "q1", "question": "How many cups?", "answer_id": "1", "tag": ["count"]},
        row | {"question_id": "q2", "question": "Which one moved?", "answer_id": None, "tag": []},  # as the test split
    ]
    path = write_parquet(root / "mc_question_val" / "validation-00000-of-00001.parquet", rows)
    return path, videos, None, {"q1": (("one", "two", "three"), 1, "physics")}, {"no answer": 1}


def perceptiontest_json(root, clip):
    videos = root / "videos"
    place(clip, videos, "video_20.mp4")
    question = {"id": 0, "question": "What is hidden?", "options": ["a key", "a cup", "a coin"], "answer_id": 2}
    data = {"video_20": {"metadata": {"video_id": "video_20"}, "mc_question": [question | {"area": "memory"}]}}
    return (
        write_json(root / "all_valid.json", data),
        videos,
        None,
        {"video_20_0": (("a key", "a cup", "a coin"), 2, "memory")},
        {},
    )


def mvbench(root, clip):
    videos = root / "video"
    place(clip, videos, "star/Charades_v1_480/AB12.mp4", "tvqa/frames_fps3_hq/s01_seg1/video.mp4")
    place(clip, videos, "data0613/clevrer/video_validation/video_10000.mp4")  # not yet moved up
    (videos / "tvqa/frames_fps3_hq/s01_seg2").mkdir(parents=True)  # frames not encoded
    (videos / "tvqa/frames_fps3_hq/s01_seg2/00001.jpg").write_bytes(b"jpeg")
    json_dir = root / "json"
    q = {"question": "What happened after the person opened the door?", "candidates": ["sat down", "left"]}
    write_json(
        json_dir / "action_sequence.json", [q | {"video": "AB12.mp4", "answer": "left", "start": 1.0, "end": 2.5}]
    )
    write_json(json_dir / "moving_count.json", [q | {"video": "video_10000.mp4", "answer": "sat down"}])
    write_json(
        json_dir / "episodic_reasoning.json",
        [q | {"video": "s01_seg1", "answer": "left"}, q | {"video": "s01_seg2", "answer": "left"}],
    )
    write_json(json_dir / "object_shuffle.json", [q | {"video": "AB12.mp4", "answer": "flew"}])
    expected = {
        "action_sequence_0": (("sat down", "left"), 1, "Action Sequence"),
        "moving_count_0": (("sat down", "left"), 0, "Moving Count"),
        "episodic_reasoning_0": (("sat down", "left"), 1, "Episodic Reasoning"),
    }
    return json_dir, videos, None, expected, {"frames, not a video": 1, "unknown answer": 1}


def tomato(root, clip):
    videos = root / "videos"
    place(clip, videos, "human/0001-02.mp4")
    q = {"question": "Which way does the hand turn?", "options": ["left", "right", "up"], "key": "0001-02"}
    q |= {"demonstration_type": "human", "motion_type": "rotation", "variation": {"zoom": 0}, "note": "n"}
    write_json(root / "data" / "rotation.json", {"0": q | {"answer": 2}, "1": q | {"answer": 9}})
    return root / "data", videos, None, {"rotation_0": (("left", "right", "up"), 2, "rotation")}, {"unknown answer": 1}


def motionbench(root, clip):
    videos = root / "MotionBench"
    place(clip, videos, "self-collected/abc.mp4")
    qa = [
        {"uid": "u1", "question": "What does the man do?\nA. waves\nB. jumps\nC. sits", "answer": "B"},
        {"uid": "u2", "question": "What moves?\nA. a cat\nB. a car", "answer": "NA"},  # the test part
    ]
    lines = [
        {"key": "k1", "video_path": "abc.mp4", "video_type": "Self-collected", "question_type": "Motion Recognition"}
        | {"video_info": {"fps": 30}, "qa": qa},
        {"key": "k2", "video_path": "def.mp4"},  # no qa list
    ]
    path = write_json(root / "video_info.meta.jsonl", lines, lines=True)
    expected = {"u1": (("waves", "jumps", "sits"), 1, "Motion Recognition")}
    return path, videos, None, expected, {"no answer": 1, "missing field": 1}


def tempcompass_json(root, clip):
    videos = root / "videos"
    place(clip, videos, "111.mp4")
    questions = root / "questions"
    write_json(
        questions / "multi-choice.json",
        {
            "111": {
                "speed": [
                    {"question": "How fast is the car?\nA. slow\nB. fast", "answer": "B. fast"},
                    {"question": "How fast is it?\nA. slow\nB. fast", "answer": "A. fast"},  # letter and words disagree
                ]
            }
        },
    )
    write_json(questions / "yes_no.json", {"111": {"direction": [{"question": "Is it going left?", "answer": "no"}]}})
    caption = "Which caption matches the video better?\nCaption A: A man runs.\nCaption B: A man sits."
    write_json(
        questions / "caption_matching.json",
        {"111": {"action": [{"question": caption, "answer": "Caption B: A man sits."}]}},
    )
    write_json(questions / "captioning.json", {"111": {"action": [{"question": "Describe it.", "answer": "..."}]}})
    expected = {
        "multi-choice/111/speed/0": (("slow", "fast"), 1, "multi-choice"),
        "yes_no/111/direction/0": ((), "no", "yes_no"),
        "caption_matching/111/action/0": (("A man runs.", "A man sits."), 1, "caption_matching"),
    }
    return questions, videos, None, expected, {"ambiguous answer": 1, "unsupported task": 1}


def tempcompass_parquet(root, clip):
    videos = root / "videos"
    place(clip, videos, "222_reverse.mp4")
    rows = [
        {
            "video_id": "222_reverse",
            "dim": "direction",
            "question": "Where to?\nA. left\nB. right\nC. up",
            "answer": "C. up",
        },
        {"video_id": "222_reverse", "dim": "direction", "question": "Where?\nA. left\nB. right", "answer": "A. left"},
    ]
    write_parquet(root / "tempcompass" / "multi-choice" / "test-00000-of-00001.parquet", rows)
    expected = {
        "multi-choice/222_reverse/direction/0": (("left", "right", "up"), 2, "multi-choice"),
        "multi-choice/222_reverse/direction/1": (("left", "right"), 0, "multi-choice"),
    }
    return root / "tempcompass", videos, None, expected, {}


SRT = """1
00:00:00,500 --> 00:00:01,500
<font color="white" size=".72c">hello there</font>

2
00:00:04,000 --> 00:00:05,000
<font color="white" size=".72c">middle line</font>

3
00:00:08,500 --> 00:00:09,500
<font color="white" size=".72c">goodbye</font>
"""


def videomme_rows(root, clip):
    videos = root / "data"
    place(clip, videos, "vidA.mp4", "vidB.mkv")
    row = {"video_id": "001", "duration": "short", "domain": "Knowledge", "sub_category": "Astronomy", "url": "u"}
    row |= {"task_type": "Counting Problem", "options": ["A. one", "B. two", "C. three", "D. four"]}
    rows = [
        row | {"videoID": "vidA", "question_id": "001-1", "question": "How many planets?", "answer": "C"},
        row | {"videoID": "vidA", "question_id": "001-2", "question": "How many moons?", "answer": "E"},
        row
        | {"videoID": "vidB", "question_id": "002-1", "question": "How many stars?", "duration": "long", "answer": "A"},
    ]
    options = ("one", "two", "three", "four")
    expected = {"001-1": (options, 2, "Counting Problem"), "002-1": (options, 0, "Counting Problem")}
    return (
        write_parquet(root / "videomme" / "test-00000-of-00001.parquet", rows),
        videos,
        expected,
        {"unknown answer": 1},
    )


def videomme(root, clip):
    annotations, videos, expected, skipped = videomme_rows(root, clip)
    return annotations, videos, None, expected, skipped


def videomme_subtitles(root, clip):
    annotations, videos, expected, skipped = videomme_rows(root, clip)
    (root / "subtitle").mkdir()
    (root / "subtitle" / "vidA.srt").write_text(SRT)  # vidB has none
    return annotations, videos, root / "subtitle", expected, skipped


def longvideobench_rows(root, clip, parquet: bool):
    videos = root / "videos"
    place(clip, videos, "lvA.mp4")
    row = {"video_id": "lvA", "video_path": "lvA.mp4", "subtitle_path": "lvA_en.json", "duration_group": 15}
    row |= {"starting_timestamp_for_subtitles": 100.0, "duration": 10.0, "question_category": "TOS", "level": "L1"}
    options = ["a hat", "a cup", "a book", "a pen"]
    listed = (
        (lambda: {f"option{i}": (options + ["N/A"])[i] for i in range(5)})
        if parquet
        else lambda: {"candidates": options}
    )
    rows = [
        row | listed() | {"id": "lv_1", "question": "What does she hold?", "correct_choice": 3},
        row | listed() | {"id": "lv_2", "question": "What is on the table?"},  # as lvb_test_wo_gt.json
    ]
    path = (
        write_parquet(root / "validation-00000-of-00001.parquet", rows)
        if parquet
        else write_json(root / "lvb_val.json", rows)
    )
    return path, videos, {"lv_1": (tuple(options), 3, "TOS")}, {"no answer": 1}


def longvideobench(root, clip):
    annotations, videos, expected, skipped = longvideobench_rows(root, clip, parquet=False)
    return annotations, videos, None, expected, skipped


def longvideobench_parquet(root, clip):
    annotations, videos, expected, skipped = longvideobench_rows(root, clip, parquet=True)
    return annotations, videos, None, expected, skipped


def longvideobench_subtitles(root, clip):
    annotations, videos, expected, skipped = longvideobench_rows(root, clip, parquet=False)
    track = [
        {"timestamp": [100.5, 101.5], "text": "first"},
        {"start": "00:01:48.000", "end": "00:01:49.000", "line": "second"},
        {"timestamp": [150.0, 151.0], "text": "after the video"},
    ]
    write_json(root / "subtitles" / "lvA_en.json", track)
    return annotations, videos, root / "subtitles", expected, skipped


def mlvu(root, clip):
    videos = root / "MLVU" / "video"
    place(clip, videos, "1_plotQA/m1.mp4")
    json_dir = root / "MLVU" / "json"
    question = {"video": "m1.mp4", "duration": 10, "question": "What color is the car?", "question_type": "plotQA"}
    write_json(json_dir / "1_plotQA.json", [question | {"candidates": ["red", "blue"], "answer": "blue"}])
    write_json(json_dir / "8_sub_scene.json", [{"video": "m2.mp4", "question": "Describe the scene.", "answer": "..."}])
    return json_dir, videos, None, {"1_plotQA_0": (("red", "blue"), 1, "plotQA")}, {"unsupported task": 1}


def mlvu_test(root, clip):
    videos = root / "MLVU_Test" / "video"
    place(clip, videos, "t1.mp4")
    question = {"question_id": "AWA-1", "video": "t1.mp4", "duration": 30, "question": "What is odd?"}
    question |= {"candidates": ["nothing", "a fall"], "answer": "a fall", "question_type": "anomaly_reco"}
    path = write_json(root / "test-ground-truth" / "test_mcq_gt.json", [question])
    return path, videos, None, {"AWA-1": (("nothing", "a fall"), 1, "anomaly_reco")}, {}


def lvbench(root, clip):
    videos = root / "LVBench"
    place(clip, videos, "all_videos/lvb1.mp4")  # not where the benchmark puts it: found by its name
    qa = [
        {"uid": "9", "question": "What is shown?\n(A) a cat\n(B) a dog\n(C) a bird\n(D) a fish", "answer": "D"}
        | {"question_type": ["entity recognition"], "time_reference": "00:01-00:02"},
        {"uid": "10", "question": "A question without options", "answer": "A"},
    ]
    path = write_json(root / "video_info.meta.jsonl", [{"key": "lvb1", "type": "documentary", "qa": qa}], lines=True)
    expected = {"9": (("a cat", "a dog", "a bird", "a fish"), 3, "documentary")}
    return path, videos, None, expected, {"unparsable options": 1}


def videoevalpro(root, clip):
    videos = root / "videos_filtered"
    place(clip, videos, "vep1.mp4")
    row = {"video": "vep1.mp4", "question": "Where does it go?", "answer_text": "right", "qa_type": "Local Perception"}
    row |= {"qa_subtype": "direction", "source": "s", "meta": "{}"}
    rows = [
        row | {"options": ["A. left", "B. right", "C. up", "D. down"], "answer": "B"},
        row | {"options": ["B. right", "A. left"], "answer": "A"},  # letters out of order
    ]
    path = write_parquet(root / "data" / "test-00000-of-00001.parquet", rows)
    return (
        path,
        videos,
        None,
        {"0_vep1.mp4": (("left", "right", "up", "down"), 1, "Local Perception")},
        {"unparsable options": 1},
    )


FORMATS = {  # case -> (benchmark name, builder)
    "nextqa parquet": ("nextqa", nextqa_parquet),
    "nextqa csv": ("nextqa", nextqa_csv),
    "perceptiontest parquet": ("perceptiontest", perceptiontest_parquet),
    "perceptiontest json": ("perceptiontest", perceptiontest_json),
    "mvbench": ("mvbench", mvbench),
    "tomato": ("tomato", tomato),
    "motionbench": ("motionbench", motionbench),
    "tempcompass json": ("tempcompass", tempcompass_json),
    "tempcompass parquet": ("tempcompass", tempcompass_parquet),
    "videomme": ("videomme", videomme),
    "videomme subtitles": ("videomme_subtitles", videomme_subtitles),
    "longvideobench": ("longvideobench", longvideobench),
    "longvideobench parquet": ("longvideobench", longvideobench_parquet),
    "longvideobench subtitles": ("longvideobench_subtitles", longvideobench_subtitles),
    "mlvu dev": ("mlvu", mlvu),
    "mlvu test": ("mlvu", mlvu_test),
    "lvbench": ("lvbench", lvbench),
    "videoevalpro": ("videoevalpro", videoevalpro),
}


def test_every_benchmark_has_a_format_here():
    assert {name for name, _ in FORMATS.values()} == set(BENCHMARKS)


@pytest.mark.parametrize("case", sorted(FORMATS))
def test_a_published_format_converts_to_a_manifest_the_reader_takes(tmp_path, clip, case):
    name, build = FORMATS[case]
    annotations, videos, subtitles, expected, skipped = build(tmp_path, clip)
    out = tmp_path / "out.jsonl"
    report = convert(BENCHMARKS[name], str(annotations), str(videos), str(out), subtitles=subtitles and str(subtitles))
    manifest = read_manifest(str(out))
    got = {e.id: (e.options, e.answer if e.options else e.answer_text, e.family) for e in manifest.entries}
    assert got == expected
    assert dict(report.skipped) == skipped and not manifest.skipped
    assert report.written == len(expected)
    assert report.found_elsewhere == (case == "lvbench")  # the rest lie where each benchmark puts them
    for entry in manifest.entries:
        assert os.path.isfile(entry.clip.path) and Path(entry.clip.path).is_relative_to(videos)
    lines = [json.loads(line) for line in out.read_text().splitlines()]
    assert all(line["benchmark"] == name and line["group"] == BENCHMARKS[name].group for line in lines)
    assert all(not line["video"].startswith(("/", "..")) for line in lines)


def test_clips_durations_and_video_fallbacks_are_kept(tmp_path, clip):
    annotations, videos, _, _, _ = mvbench(tmp_path, clip)
    convert(BENCHMARKS["mvbench"], str(annotations), str(videos), str(tmp_path / "out.jsonl"))
    clips = {e.id: e.clip for e in read_manifest(str(tmp_path / "out.jsonl")).entries}
    assert (clips["action_sequence_0"].start, clips["action_sequence_0"].end) == (1.0, 2.5)
    assert clips["moving_count_0"].path.endswith("video/data0613/clevrer/video_validation/video_10000.mp4")

    annotations, videos, _, _, _ = videomme(tmp_path / "mme", clip)
    convert(BENCHMARKS["videomme"], str(annotations), str(videos), str(tmp_path / "mme" / "out.jsonl"))
    lines = {x["id"]: x for x in map(json.loads, (tmp_path / "mme" / "out.jsonl").read_text().splitlines())}
    assert (lines["001-1"]["duration"], lines["002-1"]["duration"]) == ("short", "long")
    assert lines["002-1"]["video"] == "data/vidB.mkv"  # the same place, another suffix (lmms-eval looks for .mkv)

    annotations, videos, _, _, _ = lvbench(tmp_path / "lvb", clip)
    report = convert(BENCHMARKS["lvbench"], str(annotations), str(videos), str(tmp_path / "lvb" / "out.jsonl"))
    assert report.found_elsewhere == 1 and "1 questions' videos found by file name" in report.summary()


def test_subtitle_tracks_are_written_whole_on_the_video_time_line(tmp_path, clip):
    """The manifest carries each question's track (the prompt picks the lines near the frames a run samples), in
    the track's order, markup removed, the question text untouched."""
    from stts_jax.data.subtitles import Subtitle

    annotations, videos, subtitles, _, _ = videomme_subtitles(tmp_path, clip)
    out = tmp_path / "out.jsonl"
    report = convert(BENCHMARKS["videomme_subtitles"], str(annotations), str(videos), str(out), str(subtitles))
    entries = {e.id: e for e in read_manifest(str(out)).entries}
    assert entries["001-1"].subtitles == (
        Subtitle(0.5, 1.5, "hello there"),
        Subtitle(4.0, 5.0, "middle line"),
        Subtitle(8.5, 9.5, "goodbye"),
    )
    assert entries["001-1"].question == "How many planets?"
    assert entries["002-1"].subtitles == ()  # vidB has no subtitles: none, as in Molmo2
    assert report.without_subtitles == 1
    lines = {x["id"]: x for x in map(json.loads, out.read_text().splitlines())}
    assert lines["001-1"]["subtitles"][0] == [0.5, 1.5, "hello there"]
    plain = tmp_path / "plain.jsonl"
    convert(BENCHMARKS["videomme"], str(annotations), str(videos), str(plain))
    assert not any("subtitles" in json.loads(line) for line in plain.read_text().splitlines())

    molmo2 = tmp_path / "subtitles.json"  # Molmo2's own Video-MME subtitles
    write_json(
        molmo2,
        {"vidB": {"1": {"start": 6.0, "end": 7.0, "text": "late"}, "0": {"start": 1, "end": 2, "text": "early"}}},
    )
    convert(BENCHMARKS["videomme_subtitles"], str(annotations), str(videos), str(out), str(molmo2))
    entries = {e.id: e for e in read_manifest(str(out)).entries}
    assert entries["002-1"].subtitles == (Subtitle(1.0, 2.0, "early"), Subtitle(6.0, 7.0, "late"))
    assert entries["001-1"].subtitles == ()

    annotations, videos, subtitles, _, _ = longvideobench_subtitles(tmp_path / "lvb", clip)
    out = tmp_path / "lvb" / "out.jsonl"
    convert(BENCHMARKS["longvideobench_subtitles"], str(annotations), str(videos), str(out), str(subtitles))
    # the track is on the source video's clock: cut to [100, 110] s and shifted to 0
    assert read_manifest(str(out)).entries[0].subtitles == (Subtitle(0.5, 1.5, "first"), Subtitle(8.0, 9.0, "second"))


def test_bad_arguments_name_the_problem_and_the_fix(tmp_path, clip):
    annotations, videos, subtitles, _, _ = videomme_subtitles(tmp_path, clip)
    args = (str(annotations), str(videos))
    with pytest.raises(ConfigError, match="not inside the manifest's folder .* --allow_outside_paths"):
        convert(BENCHMARKS["videomme"], *args, str(tmp_path / "elsewhere" / "out.jsonl"))
    with pytest.raises(ConfigError, match="videomme_subtitles needs --subtitles"):
        convert(BENCHMARKS["videomme_subtitles"], *args, str(tmp_path / "out.jsonl"))
    with pytest.raises(ConfigError, match="videomme takes no --subtitles .* videomme_subtitles"):
        convert(BENCHMARKS["videomme"], *args, str(tmp_path / "out.jsonl"), subtitles=str(subtitles))
    with pytest.raises(ConfigError, match="--annotations=.*nowhere.parquet does not exist"):
        convert(BENCHMARKS["videomme"], str(tmp_path / "nowhere.parquet"), str(videos), str(tmp_path / "out.jsonl"))
    with pytest.raises(DataError, match=r"row 1 \(question 001-2\): answer 'E' is not the letter .* \(strict mode"):
        convert(BENCHMARKS["videomme"], *args, str(tmp_path / "out.jsonl"), strict=True)
    with pytest.raises(DataError, match=r"no usable question .*'missing video': 2"):
        convert(BENCHMARKS["videomme"], str(annotations), str(tmp_path / "subtitle"), str(tmp_path / "out.jsonl"))
    (tmp_path / "notes.txt").write_text("x")
    with pytest.raises(DataError, match="annotations are .parquet, .json, .jsonl or .csv"):
        convert(BENCHMARKS["videomme"], str(tmp_path / "notes.txt"), str(videos), str(tmp_path / "out.jsonl"))
    assert not (tmp_path / "out.jsonl").exists()  # nothing half-written

    out = tmp_path / "elsewhere" / "out.jsonl"  # allowed outside: paths climb out of the manifest's folder
    convert(BENCHMARKS["videomme"], *args, str(out), allow_outside_paths=True)
    assert json.loads(out.read_text().splitlines()[0])["video"] == "../data/vidA.mp4"
    assert {e.clip.path for e in read_manifest(str(out), allow_outside=True).entries} == {
        str(videos / "vidA.mp4"),
        str(videos / "vidB.mkv"),
    }


def run_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "stts_jax.benchmarks.convert", *args], capture_output=True, text=True)


def test_the_command_converts_and_summarises(tmp_path, clip):
    annotations, videos, subtitles, _, _ = videomme_subtitles(tmp_path, clip)
    out = tmp_path / "videomme.jsonl"
    run = run_cli(
        "videomme_subtitles",
        f"--annotations={annotations}",
        f"--videos={videos}",
        f"--out={out}",
        f"--subtitles={subtitles}",
    )
    assert run.returncode == 0, run.stderr
    assert run.stdout.splitlines() == [
        f"videomme_subtitles: wrote 2 questions about 2 videos to {out}",
        "skipped 1 (unknown answer 1)",
        "1 questions about a video without subtitles",
    ]
    assert "skipping test-00000-of-00001.parquet row 1 (question 001-2): answer 'E'" in run.stderr  # names it
    assert [len(e.subtitles) for e in read_manifest(str(out)).entries] == [3, 0]


def test_the_command_lists_the_benchmarks_and_refuses_others():
    run = run_cli("--help")
    assert all(f"  {name}: " in run.stdout for name in BENCHMARKS), run.stdout
    run = run_cli("nosuch", "--annotations=a", "--videos=v", "--out=o.jsonl")
    assert run.returncode == 1
    assert run.stderr.strip() == f"error: name one benchmark, one of: {', '.join(BENCHMARKS)} (got nosuch)"


# -- answer extraction -------------------------------------------------------------------------------------------

OPTIONS = ["slow", "fast", "stopped", "reversing"]
PHRASINGS = {  # generated text -> option index
    "B": 1,
    "b": 1,
    "(B)": 1,
    "B.": 1,
    "B)": 1,
    "[C]": 2,
    "  C  ": 2,
    "The answer is (B)": 1,
    "The answer is B.": 1,
    "Answer: B": 1,
    "answer: b": 1,
    "The best answer is: D": 3,
    "Best option: (C)": 2,
    "I choose C because it halts.": 2,
    "Option D": 3,
    "Option B and option C are both close, but B is better": 1,  # a mention of an option is no answer phrase
    "B. fast": 1,
    "(B) fast": 1,
    "B: fast": 1,
    "B\nThe car speeds up.": 1,
    "fast": 1,
    "Fast.": 1,
    "  REVERSING ": 3,
    "So it must be (C) here": 2,
    "I think B fits best": 1,
    "The car is moving very fast": 1,  # the option's words inside the answer
    "<think>The answer is A? No.</think>C": 2,  # a reasoning model's thinking is not its answer
    "A is wrong; the answer is B": 1,
    "The answer is B, not A": 1,  # an answer phrase outranks a letter after it
    "It is either B or C": 2,  # two letters: the last, as lmms-eval's extract_mcq_answer picks
    "A or C": 2,
    "A is wrong": 0,
    "slow at first, then fast": 1,  # two options' words: the one mentioned last (lmms-eval's MMMU rule)
    "A man is reversing the car": 3,  # "A" + a lower-case word is the article, not option A
}
NOT_AN_ANSWER = [
    "I cannot answer this question.",
    "I don't know",
    "",
    "   ",
    "None of them.",
    "E",  # a letter past the options
    "(E)",
    "The answer is E",
    "It is unclear from the video",
    "A man walks by",
    "e.g. the first one",
]


@pytest.mark.parametrize("text", sorted(PHRASINGS))
def test_a_phrasing_names_its_option(text):
    assert extract_choice(text, OPTIONS) == PHRASINGS[text]


@pytest.mark.parametrize("text", NOT_AN_ANSWER)
def test_a_text_naming_no_option_is_none(text):
    assert extract_choice(text, OPTIONS) is None


def test_letters_that_are_english_words_are_not_labels_even_with_many_options():
    options = [f"option {i}" for i in range(10)]  # "I" is the ninth label
    assert extract_choice("I cannot answer", options) is None
    assert extract_choice("I", options) == 8
    assert extract_choice("The answer is I.", options) == 8


def test_an_option_inside_a_longer_option_does_not_count():
    options = ["car", "red car", "blue truck"]
    assert extract_choice("It is the red car that turns.", options) == 1
    assert extract_choice("The car, I think.", options) == 0


@pytest.mark.parametrize(
    "text, answer",
    [
        ("Yes", "yes"),
        ("no.", "no"),
        ("No, it is not.", "no"),
        ("YES it is", "yes"),
        ("Not sure", None),
        ("I think yes", None),
    ],
)
def test_yes_no_is_read_as_tempcompass_reads_it(text, answer):
    assert extract_yes_no(text) == answer
