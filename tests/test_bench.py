"""The benchmark rows: fields, FLOP ratios, and speed-ups and MFU derived from the same run's timings (no timing
thresholds)."""

from __future__ import annotations

import contextlib
import io
import json

import jax
import pytest

from stts_jax import accelerators
from stts_jax.bench import report, step, workload
from stts_jax.bench.__main__ import main as bench_main
from stts_jax.models import get_config
from stts_jax.train.optimizer import OptimizerConfig, make_optimizer
from stts_jax.train.step import init_state, model_flops
from stts_jax.vlm.model import param_shapes

REPEATS = 3
FAKE_PEAK = accelerators.Accelerator(hbm_gib=1.0, peak_bf16_tflops=0.05, source="made up for the test")


def _step_rows(path, mode: str) -> tuple[list[dict], str]:
    """(rows from the JSON file, printed output) of a small run whose CPU is given a made-up peak."""
    argv = ["step", "--variant", "tiny", "--frames", "4", "--text_tokens", "16", "--ratios", "0.5", "--modes", mode]
    printed = io.StringIO()
    with pytest.MonkeyPatch.context() as patch, contextlib.redirect_stdout(printed):
        patch.setitem(accelerators.ACCELERATORS, "cpu", FAKE_PEAK)  # none is listed for a CPU
        assert bench_main([*argv, "--repeats", str(REPEATS), "--warmup", "0", "--json", str(path)]) == 0
    return json.loads(path.read_text()), printed.getvalue()


@pytest.fixture(scope="module")
def prefill_run(tmp_path_factory):
    return _step_rows(tmp_path_factory.mktemp("bench") / "prefill.json", "prefill")


@pytest.fixture(scope="module")
def prefill_rows(prefill_run):
    return prefill_run[0]


def _table_cell(printed: str, header: str, row_index: int) -> str:
    """The cell under `header` (right-aligned: it ends where the header ends) in the printed table's row."""
    lines = printed.splitlines()
    end = lines[0].index(f" {header} ") + 1 + len(header)
    return lines[1 + row_index][:end].split("  ")[-1].strip()


def _check_step_rows(rows: list[dict], printed: str, mode: str) -> None:
    """Every field; pruning lowers the FLOPs and the LLM length; speed-ups are the median per-round
    ratio of the timings recorded in the same rows; achieved FLOP/s and MFU are the model FLOPs over
    the median time (and over the one device's peak)."""
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
    for i, row in enumerate(rows):
        assert (row["devices"], row["device_kind"]) == (1, "cpu")
        assert row["achieved_tflops"] == pytest.approx(row["flops"] / row["seconds_per_step"] / 1e12)
        assert row["mfu"] == pytest.approx(row["flops"] / row["seconds_per_step"] / (1 * 0.05e12))
        assert (row["peak_tflops_per_device"], row["peak_source"]) == (0.05, "made up for the test")
        assert _table_cell(printed, "MFU", i) == f"{row['mfu']:.1%}"
    assert "cpu: 0.05 dense bf16 TFLOP/s per device (made up for the test)" in printed


def test_prefill_rows(prefill_run):
    _check_step_rows(*prefill_run, "prefill")


@pytest.mark.slow
def test_train_step_rows(tmp_path):
    rows, printed = _step_rows(tmp_path / "train.json", "train")
    _check_step_rows(rows, printed, "train")
    # model FLOPs, the same whether the timed step scans its layers or rematerialises them (it does both)
    cfg = get_config("tiny")
    batch, targets = workload.synthetic_batch(cfg, 1, 4, 16)
    optimizer = make_optimizer(OptimizerConfig(), param_shapes(cfg))
    state = jax.eval_shape(lambda b: init_state(cfg, optimizer, b, 0), batch)
    assert rows[0]["flops"] == model_flops(cfg, optimizer, state, batch, targets)


def test_without_a_listed_peak_mfu_is_not_available_rather_than_a_number(prefill_rows, capsys):
    """A CPU has no peak in the table: its MFU is None in the row, "n/a" in the table, and the line under
    the table says why."""
    row = prefill_rows[0] | report.throughput(prefill_rows[0]["flops"], prefill_rows[0]["seconds_per_step"], 1, "cpu")
    assert row["mfu"] is None and row["peak_tflops_per_device"] is None and row["achieved_tflops"] > 0
    report.print_table([row], step.COLUMNS)
    print("\n".join(report.peak_lines([row])))
    printed = capsys.readouterr().out
    assert _table_cell(printed, "MFU", 0) == "n/a"
    assert "no peak FLOP/s listed for device kind 'cpu', so no MFU" in printed


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
