"""Greedy generation with our KV cache against transformers' `generate` on the same weights."""

from __future__ import annotations

import numpy as np
import pytest

from stts_jax.convert.hf import batch_from_hf_inputs, load_molmo2
from stts_jax.convert.reference import torch_inputs, video_prompt
from stts_jax.vlm.generate import greedy_generate

torch = pytest.importorskip("torch")


def test_greedy_generation_matches_transformers(tiny_hf):
    _, model, path = tiny_hf
    cfg, params = load_molmo2(path)
    inputs = video_prompt(cfg, frames_per_row=[2, 3], seed=3)
    new = 12
    with torch.no_grad():
        expected = model.generate(
            **torch_inputs(inputs), max_new_tokens=new, do_sample=False, eos_token_id=None, pad_token_id=0
        )[:, inputs["input_ids"].shape[1] :].numpy()
    ours = np.asarray(greedy_generate(cfg, params, batch_from_hf_inputs(cfg, inputs), new))
    np.testing.assert_array_equal(ours, expected)
    assert len(np.unique(expected)) > 2  # the continuation is not a constant
