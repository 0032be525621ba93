"""Our Molmo2 against transformers' Molmo2 with the same weights: logits, vision tower, connector."""

from __future__ import annotations

import jax
import numpy as np
import pytest

from stts_jax.convert.hf import batch_from_hf_inputs, hf_video_logits, load_molmo2, save_molmo2
from stts_jax.convert.reference import torch_inputs, video_prompt

torch = pytest.importorskip("torch")


def _torch_logits(model, inputs):
    with torch.no_grad():
        return model(**torch_inputs(inputs)).logits.numpy()


def test_logits_match_transformers(tiny_hf):
    cfg, model, path = tiny_hf
    loaded_cfg, params = load_molmo2(path)
    inputs = video_prompt(loaded_cfg, frames_per_row=[3, 2])
    ours = hf_video_logits(loaded_cfg, params, inputs)
    theirs = _torch_logits(model, inputs)
    valid = inputs["attention_mask"] == 1
    assert ours.shape == theirs.shape
    diff = np.abs(ours - theirs)[valid].max()
    assert diff < 1e-4, f"max |logit difference| {diff}"
    assert np.abs(theirs).max() > 0.1  # a non-degenerate model


def test_pooling_indices_counted_over_all_videos_are_refused(tiny_hf):
    """transformers < 5.25 numbered every video's pooling windows over the patches of all videos; read as
    5.25's per-video indices they would point past the row's frames, so the conversion refuses them."""
    _, _, path = tiny_hf
    loaded_cfg, _ = load_molmo2(path)
    inputs = video_prompt(loaded_cfg, frames_per_row=[3, 2])
    first_tokens = int(np.prod(inputs["video_grids"][0]))  # frames x pooled rows x pooled cols
    pooling = inputs["video_token_pooling"].copy()
    second = pooling[first_tokens:]
    pooling[first_tokens:] = np.where(second >= 0, second + 3 * loaded_cfg.vision.num_patches, -1)
    with pytest.raises(ValueError, match="video_token_pooling of video 1"):
        batch_from_hf_inputs(loaded_cfg, {**inputs, "video_token_pooling": pooling})


def test_vision_tower_and_connector_match(tiny_hf):
    from stts_jax.vlm.model import Molmo2

    cfg, model, path = tiny_hf
    loaded_cfg, params = load_molmo2(path)
    inputs = video_prompt(loaded_cfg, frames_per_row=[3])
    batch = batch_from_hf_inputs(loaded_cfg, inputs)
    _, out = Molmo2(loaded_cfg).apply({"params": params}, batch)
    pt = torch_inputs(inputs)
    with torch.no_grad():
        vit = model.model.vision_tower(pt["pixel_values_videos"].float(), output_hidden_states=True)
        video = model.model.get_video_features(pt["pixel_values_videos"], pt["video_token_pooling"], pt["video_grids"])
    # fp32 agreement relative to each tensor's scale (features reach ~100 in this random model)
    pairs = [(out.out[f"vit/block_{d}"], vit.hidden_states[d]) for d in loaded_cfg.vit_feature_depths]
    pairs.append((out.out["connector/tokens"][0], video.pooler_output[0]))
    for ours, theirs in pairs:
        ours, theirs = np.asarray(ours), theirs.numpy()
        assert ours.shape == theirs.shape
        assert np.abs(ours - theirs).max() <= 2e-6 * np.abs(theirs).max()


def test_save_then_from_pretrained_round_trip(tiny_hf, tmp_path):
    transformers = pytest.importorskip("transformers")
    cfg, model, path = tiny_hf
    loaded_cfg, params = load_molmo2(path)
    save_molmo2(loaded_cfg, params, str(tmp_path / "export"), max_shard_bytes=200_000)  # several shards
    reloaded = transformers.Molmo2ForConditionalGeneration.from_pretrained(str(tmp_path / "export")).eval()
    inputs = video_prompt(loaded_cfg, frames_per_row=[2, 3], seed=1)
    valid = inputs["attention_mask"] == 1
    diff = np.abs(_torch_logits(reloaded, inputs) - _torch_logits(model, inputs))[valid].max()
    assert diff < 1e-5
    again_cfg, again = load_molmo2(str(tmp_path / "export"))
    assert again_cfg == loaded_cfg
    for ours, back in zip(jax.tree.leaves(params), jax.tree.leaves(again), strict=True):
        np.testing.assert_array_equal(ours, back)
