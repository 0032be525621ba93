"""Shared fixtures: a randomly initialised tiny transformers Molmo2 saved to disk, and video prompts."""

from __future__ import annotations

import os

import numpy as np
import pytest

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


@pytest.fixture(scope="session")
def tiny_hf(tmp_path_factory):
    """(config, torch model, directory): transformers' Molmo2 at the `tiny` sizes, saved with
    save_pretrained. Every weight is random (norm scales and biases too), and the text model mixes
    a scaled (linear) rotary on layers 0 and 2 with the unscaled one on layer 1."""
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    from stts_jax.models.config import TextConfig, get_config

    torch.manual_seed(0)
    torch.set_num_threads(2)
    cfg = get_config("tiny")
    cfg = cfg.replace(
        text=TextConfig(
            **{
                **cfg.text.__dict__,
                "rope_scaling": (("factor", 2.0), ("rope_type", "linear")),
                "rope_scaling_layers": (0, 2),
            }
        )
    )
    hf_config = transformers.Molmo2Config(**cfg.to_hf_dict())
    model = transformers.Molmo2ForConditionalGeneration(hf_config).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("norm.weight") or "layer_norm" in name:
                p.copy_(1.0 + 0.2 * torch.randn_like(p))
            elif p.ndim == 2 and "embedding" not in name:  # unit-variance activations, as trained weights keep
                p.copy_(torch.randn_like(p) / p.shape[1] ** 0.5)
            else:
                p.copy_(0.5 * torch.randn_like(p))
    path = str(tmp_path_factory.mktemp("tiny_hf"))
    model.save_pretrained(path)
    return cfg, model, path


def video_prompt(cfg, frames_per_row: list[int], seed: int = 0, left_pad: bool = True) -> dict:
    """Processor-format inputs (as transformers' Molmo2Processor returns them) for one video per row.

    Per frame: timestamp text, <frame_start>, one placeholder per pooling window, <frame_end>;
    then a question. Rows are left-padded to a common length, as for generation.
    """
    from stts_jax.data.pooling import pooling_windows, video_pooling_indices

    rng = np.random.default_rng(seed)
    rows, cols = cfg.vision.patch_grid
    windows = len(pooling_windows(rows, cols))
    text_vocab = cfg.text.vocab_size
    sequences, pixels, pooling, grids = [], [], [], []
    frame_offset = 0
    for frames in frames_per_row:
        ids = [1] + list(rng.integers(3, text_vocab, size=4))
        for _ in range(frames):
            ids += list(rng.integers(3, text_vocab, size=2))
            ids += [cfg.frame_start_token_id] + [cfg.image_patch_id] * windows + [cfg.frame_end_token_id]
        ids += list(rng.integers(3, text_vocab, size=int(rng.integers(5, 9))))
        sequences.append(ids)
        pixels.append(rng.normal(size=(frames, rows * cols, cfg.vision.patch_dim)).astype(np.float32))
        idx = video_pooling_indices(frames, rows, cols)
        pooling.append(np.where(idx >= 0, idx + frame_offset * rows * cols, -1))
        frame_offset += frames
        grids.append([frames, 3, 3])
    length = max(map(len, sequences))
    input_ids = np.zeros((len(sequences), length), np.int64)
    mask = np.zeros_like(input_ids)
    for r, ids in enumerate(sequences):
        start = length - len(ids) if left_pad else 0
        input_ids[r, start : start + len(ids)] = ids
        mask[r, start : start + len(ids)] = 1
    vision = np.isin(input_ids, cfg.vision_token_ids) & (mask == 1)
    return {
        "input_ids": input_ids,
        "attention_mask": mask,
        "pixel_values_videos": np.concatenate(pixels),
        "video_token_pooling": np.concatenate(pooling).astype(np.int64),
        "video_grids": np.asarray(grids, np.int64),
        "mm_token_type_ids": vision.astype(np.int64),
    }


def torch_inputs(inputs: dict) -> dict:
    import torch

    return {k: torch.from_numpy(np.asarray(v)) for k, v in inputs.items()}
