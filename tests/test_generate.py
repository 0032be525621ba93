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


@pytest.mark.slow  # 32 s
def test_the_prefill_runs_the_lm_head_on_the_last_tokens_only():
    """Molmo2.prefill gives the full forward's logits after each row's last token, and its program holds no
    [batch, seq, vocab] array (24k tokens x Qwen3's vocabulary would be 14 GiB in float32)."""
    import jax

    from stts_jax.bench.workload import synthetic_batch
    from stts_jax.models import get_config
    from stts_jax.models.llm import init_cache
    from stts_jax.vlm.model import Molmo2, last_token

    cfg = get_config("tiny").with_stts(method="stts", prune_ratio=0.5)
    batch, _ = synthetic_batch(cfg, 2, 4, 16)
    model, rngs = Molmo2(cfg), {"stts": jax.random.key(0)}
    params = model.init({"params": jax.random.key(1), **rngs}, batch)["params"]
    logits, forward = model.apply({"params": params}, batch, rngs=rngs)
    cache = init_cache(cfg, 2, batch.llm_length(cfg))
    prefill = jax.jit(lambda p, b: model.apply({"params": p}, b, cache, rngs=rngs, method=Molmo2.prefill)[0])
    rows = np.arange(2)
    expected = np.asarray(logits)[rows, np.asarray(last_token(forward.tokens.segment_ids))]
    np.testing.assert_allclose(np.asarray(prefill(params, batch)), expected, rtol=1e-5, atol=1e-5)
    seq, vocab = forward.tokens.input_ids.shape[1], cfg.text.vocab_size
    assert f"f32[2,{seq},{vocab}]" not in prefill.lower(params, batch).as_text(dialect="hlo")
