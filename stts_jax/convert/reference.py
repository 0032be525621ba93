"""Reference material for parity checks: random transformers Molmo2 models and processor-format prompts."""

from __future__ import annotations

import numpy as np

from stts_jax.convert.hf_config import config_to_hf
from stts_jax.models.config import Molmo2Config
from stts_jax.windows import pooling_windows, video_pooling_indices


def random_hf_molmo2(cfg: Molmo2Config, seed: int = 0):
    """transformers' `Molmo2ForConditionalGeneration` for `cfg` with every weight random.

    Norm scales are 1 + 0.2 N(0, 1); matrices N(0, 1/fan_in), so activations keep unit scale as in
    trained weights; biases and embeddings 0.5 N(0, 1). Large enough that greedy decoding does not loop.
    """
    import torch
    import transformers

    torch.manual_seed(seed)
    model = transformers.Molmo2ForConditionalGeneration(transformers.Molmo2Config(**config_to_hf(cfg))).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("norm.weight") or "layer_norm" in name:
                p.copy_(1.0 + 0.2 * torch.randn_like(p))
            elif p.ndim == 2 and "embedding" not in name:
                p.copy_(torch.randn_like(p) / p.shape[1] ** 0.5)
            else:
                p.copy_(0.5 * torch.randn_like(p))
    return model


def video_prompt(cfg: Molmo2Config, frames_per_row: list[int], seed: int = 0) -> dict[str, np.ndarray]:
    """Inputs in the format of transformers' Molmo2 processor, one random video per row.

    Per frame: two timestamp tokens, <frame_start>, one placeholder per pooling window, <frame_end>;
    then a question. Rows are left-padded to a common length, as for batched generation. Each video's
    `video_token_pooling` rows index its own patches (transformers >= 5.25 adds the offsets of the videos
    before it from `video_grids`).
    """
    rng = np.random.default_rng(seed)
    rows, cols = cfg.vision.patch_grid
    windows = pooling_windows(rows, cols)
    win_rows, win_cols = -(-rows // 3), -(-cols // 3)
    sequences, pixels, pooling, grids = [], [], [], []
    for frames in frames_per_row:
        ids = [1] + list(rng.integers(3, cfg.text.vocab_size, size=4))
        for _ in range(frames):
            ids += list(rng.integers(3, cfg.text.vocab_size, size=2))
            ids += [cfg.frame_start_token_id] + [cfg.image_patch_id] * len(windows) + [cfg.frame_end_token_id]
        ids += list(rng.integers(3, cfg.text.vocab_size, size=int(rng.integers(5, 9))))
        sequences.append(ids)
        pixels.append(rng.normal(size=(frames, rows * cols, cfg.vision.patch_dim)).astype(np.float32))
        pooling.append(video_pooling_indices(frames, rows, cols))
        grids.append([frames, win_rows, win_cols])
    length = max(map(len, sequences))
    input_ids = np.zeros((len(sequences), length), np.int64)
    mask = np.zeros_like(input_ids)
    for r, ids in enumerate(sequences):
        input_ids[r, length - len(ids) :] = ids
        mask[r, length - len(ids) :] = 1
    return {
        "input_ids": input_ids,
        "attention_mask": mask,
        "pixel_values_videos": np.concatenate(pixels),
        "video_token_pooling": np.concatenate(pooling).astype(np.int64),
        "video_grids": np.asarray(grids, np.int64),
        "mm_token_type_ids": (np.isin(input_ids, cfg.vision_token_ids) & (mask == 1)).astype(np.int64),
    }


def torch_inputs(inputs: dict) -> dict:
    import torch

    return {k: torch.from_numpy(np.asarray(v)) for k, v in inputs.items()}
