"""Manifests of real videos: every bad line skipped, counted and named; clips built once at model resolution
(in worker processes, safely in parallel), never served stale; the on-the-fly source equal to the stored one."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from test_video import write_video

from stts_jax.data.builders import CLIPS_FILE, ManifestBuilderConfig, build_manifest, manifest_dataset_name
from stts_jax.data.clips import ClipSettings, load_clip
from stts_jax.data.manifest import Clip, read_manifest
from stts_jax.data.sources import OnTheFlySource
from stts_jax.errors import DataError

GOOD = {"id": "ok", "video": "videos/a.mp4", "question": "What is it?", "options": ["x", "y"], "answer": 1}

BAD_LINES = {  # what a user's manifest holds -> the kind it is counted as
    "not UTF-8": (json.dumps(GOOD | {"id": "u"}).encode().replace(b"What", b"Wh\xffat"), "malformed line"),
    "video null": (GOOD | {"id": "v1", "video": None}, "malformed line"),
    "video a number": (GOOD | {"id": "v2", "video": 7}, "malformed line"),
    "id null": (GOOD | {"id": None}, "malformed line"),
    "id a list": (GOOD | {"id": ["a"]}, "malformed line"),
    "question null": (GOOD | {"id": "q1", "question": None}, "malformed line"),
    "question a list": (GOOD | {"id": "q2", "question": ["a"]}, "malformed line"),
    "options not strings": (GOOD | {"id": "o1", "options": [1, 2]}, "malformed line"),
    "options a string": (GOOD | {"id": "o2", "options": "abcd", "answer": 0}, "malformed line"),
    "end Infinity": (b'{"id": "e1", "video": "videos/a.mp4", "question": "q", "answer": "t", "end": Infinity}', None),
    "start NaN": (b'{"id": "e2", "video": "videos/a.mp4", "question": "q", "answer": "t", "start": NaN}', None),
    "end before start": (GOOD | {"id": "e3", "start": 3, "end": 2}, "malformed line"),
    "answer true": (GOOD | {"id": "t", "answer": True}, "answer out of range"),
    "answer out of range": (GOOD | {"id": "r", "answer": 2}, "answer out of range"),
    "missing question": ({k: v for k, v in GOOD.items() if k != "question"} | {"id": "m"}, "missing field"),
    "not an object": ([1, 2], "malformed line"),
    "not JSON": (b"{not json", "malformed line"),
    "duplicate id": (GOOD, "duplicate id"),
    "parent folder": (GOOD | {"id": "p1", "video": "../other/a.mp4"}, "path outside manifest"),
    "absolute path": (GOOD | {"id": "p2", "video": "/tmp/a.mp4"}, "path outside manifest"),
    "subtitles a string": (GOOD | {"id": "s1", "subtitles": "0.5 - 1.5 hello"}, "bad subtitles"),
    "subtitle without text": (GOOD | {"id": "s2", "subtitles": [[0.5, 1.5]]}, "bad subtitles"),
    "subtitle text a number": (GOOD | {"id": "s3", "subtitles": [[0.5, 1.5, 7]]}, "bad subtitles"),
    "subtitle ends first": (GOOD | {"id": "s4", "subtitles": [[2.0, 1.5, "hi"]]}, "bad subtitles"),
    "subtitle time text": (GOOD | {"id": "s5", "subtitles": [["0:01", 1.5, "hi"]]}, "bad subtitles"),
    "subtitle time negative": (GOOD | {"id": "s6", "subtitles": [[-1, 1.5, "hi"]]}, "bad subtitles"),
}


def write_lines(path, lines) -> str:
    raw = [x if isinstance(x, bytes) else json.dumps(x).encode() for x in lines]
    path.write_bytes(b"\n".join(raw) + b"\n")
    return str(path)


@pytest.mark.parametrize("case", sorted(BAD_LINES))
def test_a_bad_line_is_skipped_counted_and_named(tmp_path, case, caplog):
    line, kind = BAD_LINES[case]
    manifest = write_lines(tmp_path / "m.jsonl", [GOOD, line])
    with caplog.at_level(logging.WARNING):
        read = read_manifest(manifest)
    assert [e.id for e in read.entries] == ["ok"]
    assert dict(read.skipped) == {kind or "malformed line": 1}
    assert f"{manifest}:2: " in caplog.text  # the warning names file:line
    with pytest.raises(DataError, match=f"{manifest}:2: .*strict mode"):
        read_manifest(manifest, strict=True)


def test_a_byte_order_mark_keeps_the_first_line_and_paths_can_be_allowed_outside(tmp_path):
    manifest = tmp_path / "m.jsonl"
    manifest.write_bytes(
        b"\xef\xbb\xbf" + json.dumps(GOOD).encode() + b"\n" + json.dumps(BAD_LINES["parent folder"][0]).encode()
    )
    assert [e.id for e in read_manifest(str(manifest)).entries] == ["ok"]
    entries = read_manifest(str(manifest), allow_outside=True).entries
    assert [e.clip.path for e in entries] == [str(tmp_path / "videos/a.mp4"), str(tmp_path.parent / "other/a.mp4")]


def test_subtitles_are_kept_by_span_and_stored_exactly(tmp_path):
    """A track keeps Molmo2's order and keying (a repeated span: its first place, its last text); the record holds
    it as JSON text that gives back the same floats (float32 would print 0.15 as "0.2", Molmo2 prints "0.1")."""
    from stts_jax.data.subtitles import Subtitle, decode_track

    track = [[0.15, 1, "first"], [3, 4.5, "second"], [0.15, 1.0, "first, corrected"]]
    manifest = write_lines(tmp_path / "m.jsonl", [GOOD | {"subtitles": track}, GOOD | {"id": "none"}])
    with_track, without = read_manifest(manifest).entries
    assert with_track.subtitles == (Subtitle(0.15, 1.0, "first, corrected"), Subtitle(3.0, 4.5, "second"))
    assert decode_track(with_track.question_fields()["subtitles"]) == with_track.subtitles
    assert without.subtitles == () and decode_track(without.question_fields()["subtitles"]) == ()


def test_a_manifest_without_one_usable_line_says_so(tmp_path):
    manifest = write_lines(tmp_path / "m.jsonl", [BAD_LINES["video null"][0], BAD_LINES["not JSON"][0]])
    with pytest.raises(DataError, match=r"no usable line \(skipped: \{'malformed line': 2\}\)"):
        read_manifest(manifest)


# -- building ------------------------------------------------------------------------------------------------------


@pytest.fixture
def videos(tmp_path):
    """A manifest asking three questions about one clip, one about another, one each about a corrupt,
    a missing and a still-image file."""
    folder = tmp_path / "videos"
    folder.mkdir()
    write_video(folder / "a.mp4", np.arange(30) / 10, size=(48, 64), rate=10)  # 3 s -> 6 frames
    write_video(folder / "b.mp4", np.arange(20) / 10, size=(64, 48), rate=10)  # 2 s -> 4 frames
    (folder / "corrupt.mp4").write_bytes(b"\x00\x00\x00\x18ftypmp42 truncated")
    (folder / "still.mp4").write_bytes(_png())
    lines = [
        GOOD,
        GOOD | {"id": "same clip", "answer": 0},
        GOOD | {"id": "third", "question": "Again?"},
        GOOD | {"id": "other", "video": "videos/b.mp4"},
        GOOD | {"id": "corrupt", "video": "videos/corrupt.mp4"},
        GOOD | {"id": "missing", "video": "videos/nowhere.mp4"},
        GOOD | {"id": "still", "video": "videos/still.mp4"},
    ]
    return write_lines(tmp_path / "train.jsonl", lines)


def _png() -> bytes:
    import io

    from PIL import Image

    out = io.BytesIO()
    Image.fromarray(np.zeros((20, 30, 3), np.uint8)).save(out, format="PNG")
    return out.getvalue()


def build(data_dir, manifest, **changes):
    settings = ClipSettings(**({"max_frames": 64, "image_size": 28} | changes.pop("clips", {})))
    name = manifest_dataset_name("toy", "train", manifest, settings, False)
    return build_manifest(str(data_dir), ManifestBuilderConfig(name=name, manifest=manifest, clips=settings, **changes))


def test_each_clip_is_stored_once_at_model_resolution(tmp_path, videos):
    source = build(tmp_path / "data", videos, clips={"encoding": "png"})
    got = {source[i]["id"].decode(): source[i] for i in range(len(source))}
    assert sorted(got) == ["ok", "other", "same clip", "third"]
    assert source.report["clips"] == 2 and source.report["examples"] == 4
    assert source.report["skipped"] == {"unreadable video": 1, "missing file": 1, "not a video": 1}
    folder = os.fspath(source.examples.dataset_info.data_dir)
    assert os.path.exists(os.path.join(folder, CLIPS_FILE)) and "incomplete" not in folder
    assert got["ok"]["clip"] == got["same clip"]["clip"] == got["third"]["clip"] != got["other"]["clip"]
    # lossless: exactly the decoder's frames, resized as Molmo2 resizes them, with their timestamps
    for name, video in (("ok", "a.mp4"), ("other", "b.mp4")):
        frames, times = load_clip(Clip(str(tmp_path / "videos" / video)), ClipSettings(image_size=28))
        np.testing.assert_array_equal(got[name]["video"], frames)
        np.testing.assert_array_equal(got[name]["timestamps"], times)
    assert got["ok"]["video"].shape == (6, 28, 28, 3) and got["other"]["video"].shape == (4, 28, 28, 3)


def test_jpeg_frames_stay_close_and_small(tmp_path, videos):
    source = build(tmp_path / "data", videos, clips={"encoding": "jpeg", "image_size": 378})
    frames, _ = load_clip(Clip(str(tmp_path / "videos" / "a.mp4")), ClipSettings(image_size=378))
    stored = next(source[i]["video"] for i in range(len(source)) if source[i]["id"] == b"ok")
    error = np.abs(stored.astype(int) - frames.astype(int))
    assert error.mean() < 1.0 and error.max() <= 24, (error.mean(), error.max())
    assert source.report["clip_bytes"] < 2 * 6 * 378 * 378 * 3 / 10  # under a tenth of the raw frames


def test_other_manifests_or_settings_never_reuse_a_build(tmp_path, videos):
    data_dir = tmp_path / "data"
    first = build(data_dir, videos)
    again = build(data_dir, videos)
    assert again.report == first.report  # reused, not rebuilt
    lines = Path(videos).read_text().splitlines()
    changed = tmp_path / "changed.jsonl"
    changed.write_text("\n".join(lines[1:]) + "\n")  # the same folder, one question fewer
    assert len(build(data_dir, str(changed))) == len(first) - 1
    assert (
        len(
            {
                manifest_dataset_name("toy", "train", videos, s, False)
                for s in (
                    ClipSettings(),
                    ClipSettings(max_frames=32),
                    ClipSettings(image_size=224),
                    ClipSettings(encoding="png"),
                )
            }
        )
        == 4
    )
    with pytest.raises(DataError, match="strict mode"):  # a reused build that skipped lines, in strict mode
        build(data_dir, videos, strict=True)


BUILD = """
import sys
sys.path.insert(0, {tests!r})
from test_manifest import build
source = build({data!r}, {manifest!r}, workers={workers})
print(len(source), source.report["clips"])
"""


def test_concurrent_first_builds_and_worker_processes(tmp_path, videos):
    """Two processes building one manifest into one data_dir at once (one with two decoding workers) both
    get the whole dataset; the records equal a serial build's."""
    tests = os.path.dirname(__file__)
    runs = [
        subprocess.Popen(
            [sys.executable, "-c", BUILD.format(tests=tests, data=str(tmp_path / "data"), manifest=videos, workers=w)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for w in (0, 2)
    ]
    for run in runs:
        out, err = run.communicate(timeout=300)
        assert run.returncode == 0, err[-2000:]
        assert out.split()[-2:] == ["4", "2"]  # examples, clips (after TFDS's own printing)
    serial = build(tmp_path / "serial", videos)
    shared = build(tmp_path / "data", videos)
    for i in range(len(serial)):
        a, b = serial[i], shared[[shared[j]["id"] for j in range(len(shared))].index(serial[i]["id"])]
        np.testing.assert_array_equal(a["video"], b["video"])


def test_on_the_fly_source_equals_the_stored_one(tmp_path, videos):
    settings = ClipSettings(max_frames=64, image_size=28, encoding="png")
    stored = build(tmp_path / "data", videos, clips={"encoding": "png"})
    live = OnTheFlySource(read_manifest(videos), settings)
    by_id = {live[i]["id"]: live[i] for i in range(len(live))}
    errors = {k: v["error"][0] for k, v in by_id.items() if "error" in v}
    assert errors == {"corrupt": "unreadable video", "missing": "missing file", "still": "not a video"}
    for i in range(len(stored)):
        record = by_id[stored[i]["id"].decode()]
        np.testing.assert_array_equal(record["video"], stored[i]["video"])
        np.testing.assert_array_equal(record["timestamps"], stored[i]["timestamps"])


def test_build_command_builds_every_split_and_is_safe_to_rerun(tmp_path, videos):
    config = [
        "--config=" + os.path.join(os.path.dirname(__file__), "..", "configs", "manifest.py") + ":variant=tiny",
        f"--config.data.data_dir={tmp_path / 'data'}",
        f"--config.data.train_manifest={videos}",
        f"--config.data.eval_manifest={videos}",
        "--config.data.build_workers=0",
    ]
    command = [sys.executable, "-m", "stts_jax.data.build", *config]
    outputs = [subprocess.run(command, capture_output=True, text=True, timeout=300) for _ in range(2)]
    for run in outputs:
        assert run.returncode == 0, run.stderr[-2000:]
        assert "TPU_WORKER_HOSTNAMES" not in run.stderr and "libtpu" not in run.stderr  # no TPU here: not started
        lines = [line for line in run.stdout.splitlines() if line.startswith(("train ", "validation "))]
        assert len(lines) == 2 and all("4 examples, 2 clips in" in line for line in lines), run.stdout
        assert "skipped 3 {'missing file': 1, 'not a video': 1, 'unreadable video': 1}" in lines[0]
    bad = subprocess.run([*command, "--config.data.train_manifest=/nowhere.jsonl"], capture_output=True, text=True)
    assert bad.returncode == 1 and bad.stderr.strip().splitlines()[-1].startswith("error: /nowhere.jsonl")


def test_a_manifest_and_its_videos_on_gcs(tmp_path, videos, gcs):
    """The same manifest and videos uploaded to gs:// (the GCS emulator): the same dataset, read remotely."""
    gcs.put(str(tmp_path / "videos"), "gs://bucket/qa/videos", recursive=True)
    gcs.put(videos, "gs://bucket/qa/train.jsonl")
    remote = build(tmp_path / "remote", "gs://bucket/qa/train.jsonl", clips={"encoding": "png"})
    local = build(tmp_path / "local", videos, clips={"encoding": "png"})
    assert remote.report["skipped"] == local.report["skipped"] and len(remote) == len(local) == 4
    by_id = {local[i]["id"]: local[i] for i in range(len(local))}
    for i in range(len(remote)):
        np.testing.assert_array_equal(remote[i]["video"], by_id[remote[i]["id"]]["video"])


def test_on_the_fly_examples_feed_the_pipeline_and_unusable_ones_are_counted(tmp_path, videos):
    from stts_jax.data.pipeline import PipelineConfig, make_dataset
    from stts_jax.data.tokenizer import synthetic_tokenizer
    from stts_jax.models import get_config

    cfg = get_config("tiny")
    live = OnTheFlySource(read_manifest(videos), ClipSettings(image_size=cfg.vision.image_size[0]))
    tokenizer = synthetic_tokenizer(["what", "is", "it", "again", "x", "y", "a", "b"])  # "a", "b": the answers
    p = PipelineConfig(batch_size=1, max_frames=8, llm_seq_len=200, max_videos_per_row=1, repeat=False, shuffle=False)
    dataset, preprocess = make_dataset(live, cfg, p, tokenizer)
    frames = sorted(int((b["pixels_segment_ids"] > 0).sum()) for b in dataset)
    assert frames == [4, 6, 6, 6]  # b.mp4 (2 s) and the three questions about a.mp4 (3 s)
    assert dict(preprocess.skipped) == {"unreadable video": 1, "missing file": 1, "not a video": 1}


def test_a_split_without_its_manifest_names_the_config_field(tmp_path, videos):
    from stts_jax.data.sources import split_source
    from stts_jax.errors import ConfigError
    from stts_jax.train.experiment import load_config_file

    config = load_config_file(os.path.join(os.path.dirname(__file__), "..", "configs", "manifest.py"), "variant=tiny")
    config.data.update(train_manifest=videos, data_dir=str(tmp_path / "data"))
    for split, field in (("validation", "eval_manifest"), ("test", "test_manifest")):
        with pytest.raises(ConfigError, match=f"set --config.data.{field}=PATH.jsonl"):
            split_source(config, split)


def test_subtitles_reach_the_batch_after_the_frames_for_the_frames_each_run_samples(tmp_path):
    """A manifest line with subtitles, built or read on the fly: the packed batch holds Molmo2's subtitle text
    for the frames sampled, between the last <frame_end> and the user turn; more frames show more lines with no
    new manifest; the subtitle tokens count against llm_seq_len like the rest of the prompt."""
    from test_prompt import between_frames_and_user_turn, byte_tokenizer

    from stts_jax.data.pipeline import PipelineConfig, Preprocess, make_dataset
    from stts_jax.models import get_config

    (tmp_path / "videos").mkdir()
    write_video(tmp_path / "videos" / "talk.mp4", np.arange(10.0), size=(32, 32), gop=5)  # frames at 0, 1, ..., 9 s
    track = [[0.5, 1.5, "hello there"], [4.0, 5.0, "middle line"], [8.5, 9.5, "goodbye"]]
    manifest = write_lines(tmp_path / "m.jsonl", [GOOD | {"video": "videos/talk.mp4", "subtitles": track}])
    cfg, tokenizer = get_config("tiny"), byte_tokenizer()
    p = PipelineConfig(batch_size=1, max_frames=8, llm_seq_len=600, max_videos_per_row=1, repeat=False, shuffle=False)

    def shown(source) -> str:
        (batch,) = list(make_dataset(source, cfg, p, tokenizer)[0])
        return between_frames_and_user_turn(tokenizer, cfg, batch["input_ids"][0])

    two = "subtitle\n0.5 - 1.5 hello there\n8.5 - 9.5 goodbye\n"  # frames at 0 and 9 s: 4-5 s is near neither
    stored = build(tmp_path / "data", manifest, clips={"max_frames": 2})
    assert shown(stored) == two
    size = cfg.vision.image_size[0]
    assert shown(OnTheFlySource(read_manifest(manifest), ClipSettings(max_frames=2, image_size=size))) == two
    four = OnTheFlySource(read_manifest(manifest), ClipSettings(max_frames=4, image_size=size))  # 0, 3, 6, 9 s
    assert shown(four) == "subtitle\n0.5 - 1.5 hello there\n4.0 - 5.0 middle line\n8.5 - 9.5 goodbye\n"

    record = stored[0]
    plain = record | {"subtitles": "[]"}
    times = [float(t) for t in record["timestamps"]]
    fits_without = len(Preprocess(cfg, p, tokenizer).prompt(plain, times)["input_ids"])
    tight = Preprocess(cfg, PipelineConfig(max_frames=8, llm_seq_len=fits_without), tokenizer)
    assert tight(plain) is not None and tight(record) is None and dict(tight.skipped) == {"too long": 1}
