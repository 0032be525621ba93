"""Checkpoint conversion: the CLI round trip through Orbax, and clear errors on bad checkpoints."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import jax
import numpy as np
import pytest
from safetensors.numpy import load_file, save_file

from stts_jax.convert.__main__ import main
from stts_jax.convert.hf import load_molmo2
from stts_jax.errors import CheckpointError


def test_cli_round_trip_hf_orbax_hf_is_exact(tiny_hf, tmp_path):
    _, _, path = tiny_hf
    assert main(["hf-to-orbax", f"--src={path}", f"--dst={tmp_path / 'orbax'}"]) == 0
    assert main(["orbax-to-hf", f"--src={tmp_path / 'orbax'}", f"--dst={tmp_path / 'hf'}"]) == 0
    cfg, params = load_molmo2(path)
    cfg2, params2 = load_molmo2(str(tmp_path / "hf"))
    assert cfg2 == cfg
    for a, b in zip(jax.tree.leaves(params), jax.tree.leaves(params2), strict=True):
        np.testing.assert_array_equal(a, b)


def test_cli_runs_as_a_module_and_casts_to_bfloat16(tiny_hf, tmp_path):
    _, _, path = tiny_hf
    dst = tmp_path / "bf16"
    run = subprocess.run(
        [sys.executable, "-m", "stts_jax.convert", "hf-to-orbax", f"--src={path}", f"--dst={dst}", "--dtype=bfloat16"],
        capture_output=True,
        text=True,
    )
    assert run.returncode == 0, run.stderr
    from stts_jax.convert.orbax_params import load_params

    _, params = load_params(str(dst))
    assert {str(x.dtype) for x in jax.tree.leaves(params)} == {"bfloat16"}


def _copy(path, tmp_path):
    dst = tmp_path / "ckpt"
    shutil.copytree(path, dst)
    return dst


def test_directory_without_config(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(CheckpointError, match="config.json not found"):
        load_molmo2(str(tmp_path / "empty"))


def test_config_of_another_architecture(tiny_hf, tmp_path):
    dst = _copy(tiny_hf[2], tmp_path)
    config = json.loads((dst / "config.json").read_text())
    config["model_type"] = "qwen2_vl"
    (dst / "config.json").write_text(json.dumps(config))
    with pytest.raises(CheckpointError, match="model_type 'qwen2_vl', not 'molmo2'"):
        load_molmo2(str(dst))


def _edit_tensors(dst, edit):
    weights = dst / "model.safetensors"
    tensors = load_file(str(weights))
    edit(tensors)
    save_file(tensors, str(weights), {"format": "pt"})


def test_missing_tensor_is_named(tiny_hf, tmp_path):
    dst = _copy(tiny_hf[2], tmp_path)
    _edit_tensors(dst, lambda t: t.pop("model.transformer.blocks.1.mlp.ff_out.weight"))
    with pytest.raises(CheckpointError, match=r"'model.transformer.blocks.1.mlp.ff_out.weight' is missing"):
        load_molmo2(str(dst))


def test_extra_tensor_is_named(tiny_hf, tmp_path):
    dst = _copy(tiny_hf[2], tmp_path)
    _edit_tensors(dst, lambda t: t.update({"model.transformer.blocks.9.attn_norm.weight": np.ones(64, np.float32)}))
    with pytest.raises(CheckpointError, match=r"blocks.9.attn_norm.weight"):
        load_molmo2(str(dst))


def test_wrong_shape_is_named(tiny_hf, tmp_path):
    dst = _copy(tiny_hf[2], tmp_path)
    name = "model.vision_backbone.image_vit.transformer.resblocks.2.feed_forward.w1.weight"
    _edit_tensors(dst, lambda t: t.update({name: np.zeros((65, 32), np.float32)}))
    with pytest.raises(CheckpointError, match=r"resblocks.2.feed_forward.w1.weight' has shape \(65, 32\)"):
        load_molmo2(str(dst))


def test_orbax_params_of_another_shape_are_refused(tiny_hf, tmp_path):
    _, _, path = tiny_hf
    assert main(["hf-to-orbax", f"--src={path}", f"--dst={tmp_path / 'orbax'}"]) == 0
    config = json.loads((tmp_path / "orbax" / "config.json").read_text())
    config["text_config"]["intermediate_size"] = 96
    (tmp_path / "orbax" / "config.json").write_text(json.dumps(config))
    assert main(["orbax-to-hf", f"--src={tmp_path / 'orbax'}", f"--dst={tmp_path / 'hf'}"]) == 2
    assert not os.path.exists(tmp_path / "hf")
