"""Model contracts: parameter counts of the published sizes, compile-once, execution modes, dtypes."""

from __future__ import annotations

import math

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from stts_jax.convert.hf_config import config_to_hf
from stts_jax.errors import ConfigError
from stts_jax.models import get_config
from stts_jax.vlm.model import Molmo2, VideoBatch, param_shapes


def _count(tree) -> int:
    return sum(math.prod(x.shape) for x in jax.tree.leaves(tree))


@pytest.mark.parametrize("variant", ["molmo2-4b", "molmo2-8b"])
def test_published_sizes_match_transformers_parameter_count(variant):
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    cfg = get_config(variant)
    with torch.device("meta"):
        reference = transformers.Molmo2ForConditionalGeneration(transformers.Molmo2Config(**config_to_hf(cfg)))
    expected = sum(p.numel() for p in reference.parameters())
    assert _count(param_shapes(cfg)) == expected
    if variant == "molmo2-4b":  # allenai/Molmo2-4B model.safetensors.index.json: total_parameters
        assert expected == 4_850_869_200


def random_batch(cfg, rng, batch=2, frames=2, seq=40, windows=None):
    rows, cols = cfg.vision.patch_grid
    from stts_jax.windows import video_pooling_indices

    idx = video_pooling_indices(frames, rows, cols)
    ids = rng.integers(0, cfg.text.vocab_size, size=(batch, seq)).astype(np.int32)
    ids[:, 3 : 3 + len(idx)] = cfg.image_patch_id
    segments = np.ones((batch, seq), np.int32)
    segments[1:, seq - 5 :] = 0  # later rows end in padding
    return VideoBatch(
        input_ids=jnp.asarray(ids),
        segment_ids=jnp.asarray(segments),
        positions=jnp.broadcast_to(jnp.arange(seq, dtype=jnp.int32), (batch, seq)),
        pixel_values=jnp.asarray(rng.normal(size=(batch, frames, rows * cols, cfg.vision.patch_dim)), jnp.float32),
        pooling_idx=jnp.broadcast_to(jnp.asarray(idx), (batch, *idx.shape)),
    )


def test_forward_compiles_once_per_shape():
    cfg = get_config("tiny")
    model = Molmo2(cfg)
    rng = np.random.default_rng(0)
    params = model.init(jax.random.key(0), random_batch(cfg, rng))["params"]

    @jax.jit
    @chex.assert_max_traces(n=1)
    def forward(params, batch):
        return model.apply({"params": params}, batch)[0]

    first = forward(params, random_batch(cfg, rng))
    second = forward(params, random_batch(cfg, rng))  # new content, same shapes: no retrace
    assert not np.allclose(first, second)
    with pytest.raises(AssertionError, match="traced > 1"):
        forward(params, random_batch(cfg, rng, seq=48))


@pytest.mark.slow  # 39 s
def test_scan_unrolled_and_remat_agree():
    base = get_config("tiny")
    batch = random_batch(base, np.random.default_rng(1))
    params = Molmo2(base).init(jax.random.key(0), batch)["params"]

    def loss_and_grads(cfg):
        loss = lambda p: jnp.mean(Molmo2(cfg).apply({"params": p}, batch)[0] ** 2)
        return jax.jit(jax.value_and_grad(loss))(params)

    ref_loss, ref_grads = loss_and_grads(base)
    for changes in ({"scan_layers": False}, {"remat_policy": "full"}, {"attention_impl": "jax"}):
        loss, grads = loss_and_grads(base.replace(**changes))
        np.testing.assert_allclose(loss, ref_loss, rtol=1e-5)
        for g, ref in zip(jax.tree.leaves(grads), jax.tree.leaves(ref_grads), strict=True):
            np.testing.assert_allclose(g, ref, atol=1e-5 * float(np.abs(ref).max()) + 1e-8)


def test_splash_attention_model_forward_equals_xla():
    """The whole VLM with the Pallas splash kernel (interpret mode on CPU) on every self-attention."""
    cfg = get_config("tiny")
    batch = random_batch(cfg, np.random.default_rng(4))
    params = Molmo2(cfg).init(jax.random.key(0), batch)["params"]
    xla = jax.jit(Molmo2(cfg).apply)({"params": params}, batch)[0]
    splash = jax.jit(Molmo2(cfg.replace(attention_impl="splash")).apply)({"params": params}, batch)[0]
    real = np.asarray(batch.segment_ids) != 0
    np.testing.assert_allclose(np.asarray(splash)[real], np.asarray(xla)[real], atol=2e-5)


def test_bfloat16_params_and_compute_run_close_to_fp32():
    cfg = get_config("tiny")
    batch = random_batch(cfg, np.random.default_rng(2))
    params = Molmo2(cfg).init(jax.random.key(0), batch)["params"]
    fp32 = jax.jit(Molmo2(cfg).apply)({"params": params}, batch)[0]
    bf16_cfg = cfg.replace(dtype="bfloat16", param_dtype="bfloat16")
    bf16_params = jax.tree.map(lambda x: x.astype(jnp.bfloat16), params)
    bf16 = jax.jit(Molmo2(bf16_cfg).apply)({"params": bf16_params}, batch)[0]
    assert bf16.dtype == jnp.bfloat16
    assert np.abs(np.asarray(bf16, np.float32) - fp32).max() < 0.1 * np.abs(fp32).max()


def test_impossible_config_names_the_field():
    with pytest.raises(ConfigError, match="num_key_value_heads"):
        get_config("tiny").replace(text=get_config("tiny").text.__class__(num_attention_heads=6)).validate()
    with pytest.raises(ConfigError, match="attention_impl"):
        get_config("tiny", attention_impl="flash")
    with pytest.raises(ConfigError, match="Unknown model variant"):
        get_config("molmo2-70b")


def test_packed_row_equals_examples_run_alone():
    """Two examples packed in one row (segment ids 1 and 2, positions restarting) give the logits each
    gives alone: no attention crosses examples, and vision tokens stay within their own example."""
    cfg = get_config("tiny")
    rng = np.random.default_rng(3)
    alone = [random_batch(cfg, rng, batch=1, frames=f, seq=s) for f, s in ((2, 30), (1, 20))]
    alone[0] = alone[0].replace(segment_ids=jnp.ones_like(alone[0].segment_ids))
    alone[1] = alone[1].replace(segment_ids=jnp.ones_like(alone[1].segment_ids))
    model = Molmo2(cfg)
    params = model.init(jax.random.key(0), alone[0])["params"]
    forward = jax.jit(lambda b: model.apply({"params": params}, b)[0])
    expected = [np.asarray(forward(b))[0] for b in alone]

    frames0 = alone[0].pixel_values.shape[1]
    patches = cfg.vision.num_patches
    pool1 = jnp.where(alone[1].pooling_idx >= 0, alone[1].pooling_idx + frames0 * patches, -1)
    packed = VideoBatch(
        input_ids=jnp.concatenate([b.input_ids for b in alone], axis=1),
        segment_ids=jnp.concatenate([alone[0].segment_ids, 2 * alone[1].segment_ids], axis=1),
        positions=jnp.concatenate([b.positions for b in alone], axis=1),
        pixel_values=jnp.concatenate([b.pixel_values for b in alone], axis=1),
        pooling_idx=jnp.concatenate([alone[0].pooling_idx, pool1], axis=1),
    )
    got = np.asarray(forward(packed))[0]
    np.testing.assert_allclose(got[:30], expected[0], atol=2e-5)
    np.testing.assert_allclose(got[30:], expected[1], atol=2e-5)
