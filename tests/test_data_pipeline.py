"""The data path end to end: synthetic and manifest TFDS builders, preprocessing, packed batches."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
import tensorflow_datasets as tfds
from conftest import ROOT

from stts_jax.data.builders import SyntheticBuilderConfig, build_synthetic
from stts_jax.data.pipeline import PipelineConfig, input_seq_len, make_dataset, to_model_batch
from stts_jax.data.synthetic import COLORS, FAMILIES, QUESTION_WORDS, SyntheticConfig, generate_example
from stts_jax.data.tokenizer import synthetic_tokenizer
from stts_jax.errors import DataError
from stts_jax.models import get_config
from stts_jax.stts import budget
from stts_jax.windows import windows_per_frame

SYNTH = SyntheticConfig(frames=6, size=48, object_size=10)


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory):
    data_dir = str(tmp_path_factory.mktemp("tfds"))
    config = SyntheticBuilderConfig(name="small", synthetic=SYNTH, num_examples=(("train", 30), ("test", 12)))
    builder = build_synthetic(data_dir, config)
    tokenizer = synthetic_tokenizer(SYNTH.vocabulary())
    return builder, data_dir, tokenizer


def test_synthetic_builder_writes_array_record_read_without_tensorflow(synthetic):
    builder, data_dir, _ = synthetic
    source = tfds.data_source("synthetic_video_qa/small", data_dir=data_dir, split="train")
    assert len(source) == 30
    ex = source[0]
    assert ex["video"].shape == (6, 48, 48, 3) and ex["video"].dtype == np.uint8
    assert ex["masks"].shape == (6, 48, 48)
    assert 0 <= ex["answer"] < len(ex["options"]) == 4
    assert {source[i]["family"].decode() for i in range(12)} == set(FAMILIES)
    train_ids = {source[i]["id"] for i in range(30)}
    test = tfds.data_source("synthetic_video_qa/small", data_dir=data_dir, split="test")
    assert not train_ids & {test[i]["id"] for i in range(len(test))}  # disjoint seeds
    assert not any(f.endswith(".tfrecord") for _, _, files in os.walk(data_dir) for f in files)


def test_needle_color_family_shows_one_object_in_needle_frames_only():
    cfg = SyntheticConfig(frames=6, size=48, families=("needle_color",), max_distractors=0, needle_frames=2)
    for index in range(8):
        ex = generate_example(3, index, cfg)
        shown = [t for t in range(6) if ex["masks"][t].any()]
        assert len(shown) == 2 and shown[1] == shown[0] + 1 and shown[0] >= 1, shown
        color = ex["options"][ex["answer"]]
        assert ex["family"] == "needle_color" and len(set(ex["options"])) == 4
        pixels = ex["video"][shown[0]][ex["masks"][shown[0]] > 0]
        assert (pixels == np.array(COLORS[color], np.uint8)).all()
    with pytest.raises(ValueError, match="families"):
        SyntheticConfig(families=("needle", "no_such_family"))
    with pytest.raises(ValueError, match="frames 2: families .* need >= 3"):  # not numpy's error mid-build
        SyntheticConfig(frames=2)
    with pytest.raises(ValueError, match="need >= 3"):
        SyntheticConfig(frames=2, families=("needle_color",), needle_frames=2)
    for frames, families in ((2, ("moving_color", "needle_color")), (3, FAMILIES)):  # the least that works
        cfg = SyntheticConfig(frames=frames, families=families, max_distractors=0)
        for index in range(len(families)):
            generate_example(0, index, cfg)
    # the default mix and its token ids are unchanged by the extra family and words
    assert SyntheticConfig().families == FAMILIES
    assert SyntheticConfig().vocabulary()[: len(QUESTION_WORDS)] == list(QUESTION_WORDS)


def _pipeline(synthetic, **changes):
    _, data_dir, tokenizer = synthetic
    cfg = get_config("tiny")
    p = PipelineConfig(batch_size=2, max_frames=8, llm_seq_len=140, prune_ratio=0.5, **changes)
    source = tfds.data_source("synthetic_video_qa/small", data_dir=data_dir, split="train")
    ds, pre = make_dataset(source, cfg, p, tokenizer)
    return cfg, p, ds, pre


def test_packed_batches_follow_the_contract(synthetic):
    cfg, p, ds, _ = _pipeline(synthetic)
    windows = windows_per_frame(cfg)
    it = iter(ds)
    for _ in range(4):
        batch = next(it)
        seq = input_seq_len(cfg, p)
        assert batch["input_ids"].shape == (2, seq) and batch["pixels"].shape == (2, 8, 49, 108)
        for r in range(2):
            segs, frames = batch["input_ids_segment_ids"][r], batch["pixels_segment_ids"][r]
            ids = batch["input_ids"][r]
            pruned_total = 0
            for s in set(segs[segs > 0].tolist()):
                t = int((frames == s).sum())
                # the whole example is in this row: its placeholders match its frames
                assert (ids[segs == s] == cfg.image_patch_id).sum() == windows * t
                assert batch["input_ids_positions"][r][segs == s].tolist() == list(range((segs == s).sum()))
                pruned_total += budget.pruned_windows(t, windows, p.prune_ratio)
            assert (segs > 0).sum() - pruned_total <= p.llm_seq_len  # post-pruning budget respected
            assert len(set(segs[segs > 0].tolist())) <= p.max_videos_per_row
        video, targets = to_model_batch(batch, cfg, p.layout)
        assert video.pixel_values.dtype == np.float32 and float(np.abs(video.pixel_values).max()) <= 1.0
        assert int(targets.sum()) > 0


def test_iteration_is_deterministic_and_resumes_from_state(synthetic):
    first = [next(it) for it in [iter(_pipeline(synthetic)[2])] for _ in range(5)]
    again = iter(_pipeline(synthetic)[2])
    for expected in first[:2]:
        np.testing.assert_array_equal(next(again)["input_ids"], expected["input_ids"])
    state = again.get_state()
    resumed = iter(_pipeline(synthetic)[2])
    resumed.set_state(json.loads(json.dumps(state)))  # what a checkpoint stores
    for expected in first[2:]:
        got = next(resumed)
        for key in ("input_ids", "pixels", "pixels_segment_ids"):
            np.testing.assert_array_equal(got[key], expected[key])


def test_examples_too_long_are_skipped_and_counted_or_refused(synthetic):
    cfg, _, _, pre = _pipeline(synthetic)
    pre_short = pre.__class__(cfg, PipelineConfig(llm_seq_len=20, prune_ratio=0.5, max_frames=8), pre.tokenizer)
    source = tfds.data_source("synthetic_video_qa/small", data_dir=synthetic[1], split="train")
    assert pre_short(source[0]) is None and pre_short.skipped["too long"] == 1
    strict = pre.__class__(cfg, PipelineConfig(llm_seq_len=20, strict=True), pre.tokenizer)
    with pytest.raises(ValueError, match="llm_seq_len 20"):
        strict(source[0])


def _write_mp4(path, frames, fps, size=(48, 64)):
    import av

    with av.open(path, "w") as container:
        stream = container.add_stream("mpeg4", rate=fps)
        stream.height, stream.width = size
        stream.pix_fmt = "yuv420p"
        container.start_encoding()
        for i in range(frames):
            image = np.full((*size, 3), (i * 25) % 255, np.uint8)
            for packet in stream.encode(av.VideoFrame.from_ndarray(image, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)


def test_hosts_read_disjoint_shards(synthetic):
    _, data_dir, tokenizer = synthetic
    cfg = get_config("tiny")
    p = PipelineConfig(batch_size=1, max_frames=8, llm_seq_len=140, max_videos_per_row=1, shuffle=False, repeat=False)
    source = tfds.data_source("synthetic_video_qa/small", data_dir=data_dir, split="train")
    seen = []
    for host in range(2):
        ds, _ = make_dataset(source, cfg, p, tokenizer, shard_index=host, shard_count=2)
        seen.append({b["pixels"][0][b["pixels_segment_ids"][0] > 0].tobytes() for b in ds})  # the video identifies it
    assert seen[0] and seen[1] and not seen[0] & seen[1]
    assert len(seen[0]) + len(seen[1]) == 30


def test_training_and_evaluation_on_a_manifest_of_mp4s(tmp_path):
    """configs/manifest.py end to end at tiny sizes: mp4 files + JSONL + a tokenizer.json file -> TFDS
    -> two training steps with validation -> evaluation of the test split."""
    from stts_jax.data.sources import source
    from stts_jax.evaluate.multiple_choice import evaluate
    from stts_jax.train.checkpoint import restore_params
    from stts_jax.train.experiment import load_config_file
    from stts_jax.train.loop import train

    videos = tmp_path / "videos"
    videos.mkdir()
    colours = ["red", "green", "blue"]
    lines = []
    for i in range(12):
        _write_mp4(str(videos / f"v{i}.mp4"), 8, 4)
        lines.append(
            {
                "id": f"q{i}",
                "video": f"videos/v{i}.mp4",
                "question": "What colour is it?",
                "options": colours,
                "answer": i % 3,
            }
        )
    for split in ("train", "validation", "test"):
        (tmp_path / f"{split}.jsonl").write_text("\n".join(json.dumps(x) for x in lines) + "\n")
    tokenizer_file = tmp_path / "tokenizer.json"
    synthetic_tokenizer(["what", "colour", "is", "it", "a", "b", "c", *colours]).save(str(tokenizer_file))

    config = load_config_file(os.path.join(ROOT, "configs", "manifest.py"), "variant=tiny,max_frames=4")
    config.data.update(
        data_dir=str(tmp_path / "data"),
        train_manifest=str(tmp_path / "train.jsonl"),
        eval_manifest=str(tmp_path / "validation.jsonl"),
        test_manifest=str(tmp_path / "test.jsonl"),
        tokenizer=str(tokenizer_file),
        batch_size=2,
        llm_seq_len=160,
        build_workers=0,
        progress=False,
    )
    config.model.dtype = "float32"
    config.stts.layer = 1
    config.train.update(steps=2, eval_every=2, eval_batches=1, checkpoint_every=2)
    metrics = train(config, str(tmp_path / "run"))
    assert metrics["step"] == 2 and np.isfinite(metrics["loss"]) and metrics["answer_examples"] > 0
    cfg, params, _ = restore_params(str(tmp_path / "run"))
    test, tokenizer = source(config, "test")
    results = evaluate(cfg, params, test, tokenizer, batch_size=4, progress=False)
    assert results["examples"] == 12 and results["frames_per_example"] == 4  # 2 s at 4 fps, 2 fps sampling
    config.data.mode = "on_the_fly"  # the same split decoded from the videos as it is read: no build
    live, _ = source(config, "test")
    assert type(live).__name__ == "OnTheFlySource"
    results = evaluate(cfg, params, live, tokenizer, batch_size=4, progress=False)
    assert results["examples"] == 12 and results["frames_per_example"] == 4 and not results["skipped"]


def test_a_split_without_one_usable_example_stops_with_one_error(synthetic, caplog):
    """Every example longer than data.llm_seq_len: the repeating pipeline stops after one pass with the
    counts, instead of skipping forever (it once printed about 100,000 warnings); warnings are capped."""
    import logging
    import signal

    _, data_dir, tokenizer = synthetic
    source = tfds.data_source("synthetic_video_qa/small", data_dir=data_dir, split="train")
    p = PipelineConfig(batch_size=1, max_frames=8, llm_seq_len=20, max_videos_per_row=1)
    dataset, _ = make_dataset(source, get_config("tiny"), p, tokenizer)
    signal.signal(signal.SIGALRM, lambda *_: pytest.fail("the pipeline kept skipping: no error after 60 s"))
    signal.alarm(60)
    try:
        with caplog.at_level(logging.WARNING), pytest.raises(DataError, match=r"none of the 30 examples can be used"):
            next(iter(dataset))
    finally:
        signal.alarm(0)
    assert len([r for r in caplog.records if "skipping example" in r.getMessage()]) <= 21
