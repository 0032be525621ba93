"""The benchmark rows: fields, FLOP ratios, and speed-ups derived from the same run's timings (no timing thresholds)."""

from __future__ import annotations

import json

import pytest

from stts_jax.bench import report
from stts_jax.bench.__main__ import main as bench_main

REPEATS = 3


def _step_rows(path, mode: str) -> list[dict]:
    argv = ["step", "--variant", "tiny", "--frames", "4", "--text_tokens", "16", "--ratios", "0.5", "--modes", mode]
    assert bench_main([*argv, "--repeats", str(REPEATS), "--warmup", "0", "--json", str(path)]) == 0
    return json.loads(path.read_text())


@pytest.fixture(scope="module")
def prefill_rows(tmp_path_factory):
    return _step_rows(tmp_path_factory.mktemp("bench") / "prefill.json", "prefill")


def _check_step_rows(rows: list[dict], mode: str) -> None:
    """Every field; pruning lowers the FLOPs and the LLM length; speed-ups are the median per-round
    ratio of the timings recorded in the same rows."""
    assert [(r["mode"], r["method"]) for r in rows] == [(mode, "none"), (mode, "stts")]
    unpruned, pruned = rows
    for row in rows:
        assert set(report.FIELDS) <= set(row), set(report.FIELDS) - set(row)
        assert row["flops"] > 0 and row["peak_memory_bytes"] > 0
        assert len(row["seconds"]) == REPEATS
        assert row["seconds_per_step"] == pytest.approx(sorted(row["seconds"])[REPEATS // 2])
        ratios = sorted(b / c for b, c in zip(unpruned["seconds"], row["seconds"], strict=True))
        assert row["speedup_vs_unpruned"] == pytest.approx(ratios[REPEATS // 2])
    assert unpruned["speedup_vs_unpruned"] == 1.0 and unpruned["flop_ratio_vs_unpruned"] == 1.0
    assert unpruned["packing_efficiency"] is None
    assert pruned["flop_ratio_vs_unpruned"] == pytest.approx(pruned["flops"] / unpruned["flops"])
    assert pruned["flop_ratio_vs_unpruned"] < 1.0
    assert pruned["llm_tokens"] < unpruned["llm_tokens"]
    assert 0.0 < pruned["packing_efficiency"] <= 1.0


def test_prefill_rows(prefill_rows):
    _check_step_rows(prefill_rows, "prefill")


@pytest.mark.slow
def test_train_step_rows(tmp_path):
    _check_step_rows(_step_rows(tmp_path / "train.json", "train"), "train")


def test_prefill_split_times_the_vit_llm_and_scorer(prefill_rows):
    unpruned, pruned = prefill_rows
    for part in ("vit", "llm"):
        assert unpruned[f"{part}_seconds"] > 0 and pruned[f"{part}_seconds"] > 0
    assert pruned["scorer_seconds"] > 0 and "scorer_seconds" not in unpruned
    assert 0 < pruned["scorer_flops"] < pruned["vit_flops"]  # the scorer runs inside the vision side
    for row in prefill_rows:  # the halves add up to the whole prefill (up to the cache writes)
        assert row["vit_flops"] + row["llm_flops"] == pytest.approx(row["flops"], rel=0.05)


def test_interleaved_rounds_alternate_order_after_untimed_warmup():
    calls = []
    runs = {name: (lambda name=name: calls.append(name)) for name in "abc"}
    times = report.interleaved_times(runs, repeats=2, warmup=1)
    assert calls == list("abc") + list("abc") + list("cba")
    assert {name: len(t) for name, t in times.items()} == {"a": 2, "b": 2, "c": 2}


def test_unknown_sub_command_is_refused():
    assert bench_main(["nope"]) == 2
    assert bench_main([]) == 2


def test_video_benchmark_measures_a_file_it_wrote(tmp_path):
    """The `video` sub-command's two halves on a small file: what it writes decodes, with a variable rate,
    to the frames the sampling asks for, and each timing is a positive number of seconds."""
    from stts_jax.bench import video

    path = str(tmp_path / "vfr.mp4")
    video.write(path, "libx264", "mp4", (96, 128), None, 6)  # 6 s at irregular times
    measured = video.measure(path, repeats=1)
    assert measured["frames"] == 12  # 2 fps over 6 s, each sample a distinct frame
    assert all(measured[k] > 0 for k in ("decode", "encode", "stored", "patchify")) and measured["clip_bytes"] > 0
