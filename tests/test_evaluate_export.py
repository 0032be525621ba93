"""Evaluation (both scoring modes, per family, test-time scaling) and export round trips."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import jax
import numpy as np
import pytest
from conftest import ROOT, synthetic_config

from stts_jax.convert.hf import hf_video_logits
from stts_jax.data.sources import source
from stts_jax.errors import CheckpointError, ConfigError
from stts_jax.evaluate.multiple_choice import evaluate, frames_for_equal_tokens, scaled_data
from stts_jax.export.formats import export, load_export
from stts_jax.train.checkpoint import restore_params
from stts_jax.train.loop import train


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """A tiny STTS model (k = 0.5) trained for 40 steps: (workdir, config)."""
    root = tmp_path_factory.mktemp("run")
    config = synthetic_config(str(root / "data"), 40, 40, data__test_examples=24)
    train(config, str(root / "run"))
    return str(root / "run"), config


def test_test_time_scaling_frames_match_the_paper():
    assert [frames_for_equal_tokens(k, 64) for k in (0.0, 0.3, 0.4, 0.5)] == [64, 92, 107, 128]
    with pytest.raises(ConfigError, match="prune_ratio"):
        frames_for_equal_tokens(1.0, 64)


def test_scoring_modes_agree_and_families_add_up(run):
    workdir, config = run
    cfg, params, _ = restore_params(workdir)
    test_source, tokenizer = source(config, "test")
    results = evaluate(cfg, params, test_source, tokenizer, batch_size=8, progress=False)
    predictions = results["predictions"]
    assert results["examples"] == len(predictions) == 24
    assert sum(f["count"] for f in results["families"].values()) == 24 and len(results["families"]) == 6
    for mode in ("generate", "likelihood"):
        by_family = sum(f[mode] * f["count"] for f in results["families"].values())
        assert by_family == pytest.approx(results["accuracy"][mode] * 24)
    letters = [p for p in predictions if p["generate"] >= 0]
    assert len(letters) >= 12  # the trained model answers with a letter
    assert all(p["generate"] == p["likelihood"] for p in letters)  # same prefill, same choice
    if len(letters) == len(predictions):
        assert results["accuracy"]["generate"] == results["accuracy"]["likelihood"]
    assert results["vision_tokens_per_example"] == 18  # 4 frames x 9 windows, half pruned
    assert 0 < results["kept_object_share"] <= 1
    by_family = sum(f["kept_object_share"] * f["count"] for f in results["families"].values())
    assert by_family == pytest.approx(results["kept_object_share"] * 24)


def test_option_answers_are_scored_by_their_words(run):
    workdir, config = run
    cfg, params, _ = restore_params(workdir)
    test_source, tokenizer = source(config, "test")
    results = evaluate(cfg, params, test_source, tokenizer, limit=8, progress=False, answer_format="option")
    assert results["examples"] == 8
    assert all(0 <= p["likelihood"] < 6 and -1 <= p["generate"] < 6 for p in results["predictions"])


def test_object_windows_follow_the_masks():
    from stts_jax.evaluate.multiple_choice import object_windows
    from stts_jax.models.variants import get_config

    cfg = get_config("tiny")  # 42 px frames, 7x7 patches of 6 px, 3x3 windows padded to 9x9 (one -1 row/col first)
    masks = np.zeros((2, 64, 64), np.uint8)
    masks[1, :4, :4] = 1  # top-left corner: patch (0, 0), which is in window 0
    masks[1, 60:, 60:] = 2  # bottom-right corner: patch (6, 6), window 8
    windows = object_windows(masks, cfg)
    assert windows.shape == (2, 9) and not windows[0].any()
    assert np.flatnonzero(windows[1]).tolist() == [0, 8]


def test_test_time_scaling_evaluates_more_frames_at_the_same_tokens(run):
    workdir, config = run
    cfg, params, _ = restore_params(workdir)
    frames = frames_for_equal_tokens(cfg.stts.prune_ratio, config.data.frames, windows=9)
    scaled = scaled_data(config, frames, "test")
    assert (frames, scaled.data.fps, scaled.data.train_examples) == (8, 4.0, 0)  # same 2 s clips, denser
    test_source, tokenizer = source(scaled, "test")
    results = evaluate(cfg, params, test_source, tokenizer, batch_size=8, limit=8, progress=False)
    assert results["frames_per_example"] == 8 and results["vision_tokens_per_example"] == 36  # = unpruned 4 frames


def test_hf_export_loads_in_transformers_with_the_same_logits(run, tmp_path):
    torch = pytest.importorskip("torch")
    import transformers

    from stts_jax.convert.reference import torch_inputs, video_prompt

    workdir, _ = run
    cfg, params, _ = restore_params(workdir)
    export(cfg, params, str(tmp_path / "hf"), "hf")
    assert {"config.json", "stts_config.json", "stts_scorer.safetensors"} <= set(os.listdir(tmp_path / "hf"))
    model = transformers.Molmo2ForConditionalGeneration.from_pretrained(str(tmp_path / "hf")).eval()
    no_pruning = cfg.with_stts(method="none")
    inputs = video_prompt(no_pruning, frames_per_row=[2, 3], seed=1)
    with torch.no_grad():
        expected = model(**torch_inputs(inputs)).logits.numpy()
    ours = hf_video_logits(no_pruning, {k: v for k, v in params.items() if k != "scorer"}, inputs)
    real = inputs["attention_mask"].astype(bool)
    np.testing.assert_allclose(ours[real], expected[real], atol=1e-4)

    loaded_cfg, loaded = load_export(str(tmp_path / "hf"))
    assert loaded_cfg.stts.method == "stts" and loaded_cfg.stts.prune_ratio == 0.5
    for a, b in zip(jax.tree.leaves(loaded), jax.tree.leaves(params), strict=True):
        np.testing.assert_array_equal(a, b)

    # --dtype=bfloat16: bfloat16 tensors (the scorer's too) and config.json says so, so transformers loads bf16
    from safetensors import safe_open

    export(cfg, params, str(tmp_path / "bf16"), "hf", dtype="bfloat16")
    for name in ("model.safetensors", "stts_scorer.safetensors"):
        with safe_open(str(tmp_path / "bf16" / name), "np") as f:
            names = f.keys()
            assert {f.get_slice(k).get_dtype() for k in names} == {"BF16"}, name
    assert json.loads((tmp_path / "bf16" / "config.json").read_text())["dtype"] == "bfloat16"
    half = transformers.Molmo2ForConditionalGeneration.from_pretrained(str(tmp_path / "bf16"), dtype="auto")
    assert half.dtype == torch.bfloat16


def test_orbax_export_evaluates_to_the_same_accuracy(run, tmp_path):
    workdir, config = run
    cfg, params, _ = restore_params(workdir)
    export(cfg, params, str(tmp_path / "orbax"), "orbax")
    loaded_cfg, loaded = load_export(str(tmp_path / "orbax"))
    test_source, tokenizer = source(config, "test")
    a = evaluate(cfg, params, test_source, tokenizer, limit=12, progress=False)
    b = evaluate(loaded_cfg, loaded, test_source, tokenizer, limit=12, progress=False)
    assert a["predictions"] == b["predictions"] and a["accuracy"] == b["accuracy"]
    export(cfg, params, str(tmp_path / "bf16"), "orbax", dtype="bfloat16")
    _, half = load_export(str(tmp_path / "bf16"))
    assert {x.dtype for x in jax.tree.leaves(half)} == {np.dtype("bfloat16")}


def test_bad_input_is_named(run, tmp_path):
    workdir, config = run
    with pytest.raises(CheckpointError, match="never saved"):
        restore_params(workdir, step=7)
    with pytest.raises(CheckpointError, match="config.json not found"):
        restore_params(str(tmp_path))
    cfg, params, _ = restore_params(workdir)
    with pytest.raises(ValueError, match="format 'onnx' is not known"):
        export(cfg, params, str(tmp_path / "x"), "onnx")
    with pytest.raises(ValueError, match="--dtype 'int3' is not an export dtype"):
        export(cfg, params, str(tmp_path / "x"), "hf", dtype="int3")
    assert not (tmp_path / "x").exists()  # nothing written
    (tmp_path / "file").write_text("")
    with pytest.raises(CheckpointError, match="is a file"):
        export(cfg, params, str(tmp_path / "file"), "orbax")
    export(cfg.with_stts(method="none"), {k: v for k, v in params.items() if k != "scorer"}, str(tmp_path / "n"), "hf")
    with pytest.raises(CheckpointError, match="not empty"):
        export(cfg, params, str(tmp_path / "n"), "hf")
    with pytest.raises(CheckpointError, match="holds no STTS scorer"):
        load_export(str(tmp_path / "n"), stts=cfg.stts)
    with pytest.raises(CheckpointError, match="does not exist"):
        load_export(str(tmp_path / "missing"))
    cli = subprocess.run(
        [sys.executable, "-m", "stts_jax.evaluate", f"--checkpoint={workdir}", "--step=7"],
        cwd=ROOT,
        capture_output=True,
        text=True,
    )
    assert cli.returncode != 0 and "step 7 was never saved" in cli.stderr


def test_evaluate_cli_writes_json_and_markdown(run, tmp_path):
    workdir, _ = run
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "stts_jax.evaluate",
            f"--checkpoint={workdir}",
            "--method=random",
            "--prune_ratio=0.7",
            "--limit=8",
            f"--json={tmp_path / 'r.json'}",
            f"--markdown={tmp_path / 'r.md'}",
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
    )
    assert out.returncode == 0, out.stderr[-2000:]
    results = json.loads((tmp_path / "r.json").read_text())
    assert (results["method"], results["prune_ratio"], results["examples"]) == ("random", 0.7, 8)
    assert results["vision_tokens_per_example"] == 36 - int(9 * 0.7 * 4)
    assert "| random k=0.7, 4 frames |" in (tmp_path / "r.md").read_text()


def test_command_line_values_out_of_range_get_one_line(tmp_path):
    """Checked while the flags are parsed: one line naming the flag, nothing written."""
    import subprocess
    import sys

    cases = [
        ["stts_jax.evaluate", f"--checkpoint={tmp_path}", "--limit=0"],
        ["stts_jax.evaluate", f"--checkpoint={tmp_path}", "--batch_size=0"],
        ["stts_jax.export", f"--workdir={tmp_path}", f"--out={tmp_path / 'out'}", "--dtype=int3"],
    ]
    for module, *args in cases:
        run = subprocess.run([sys.executable, "-m", module, *args], capture_output=True, text=True, timeout=120)
        flag = args[-1].split("=")[0]
        assert run.returncode == 1 and f"Flags parsing error: flag {flag}=" in run.stderr, run.stderr[-1000:]
    assert not (tmp_path / "out").exists()
