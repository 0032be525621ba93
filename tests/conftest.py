"""Shared fixtures: a randomly initialised tiny transformers Molmo2 saved to disk."""

from __future__ import annotations

import os

import pytest

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


@pytest.fixture(scope="session")
def tiny_hf(tmp_path_factory):
    """(config, torch model, directory): transformers' Molmo2 at the `tiny` sizes with random weights,
    saved with save_pretrained. The text model mixes a scaled (linear) rotary on layers 0 and 2 with
    the unscaled one on layer 1; attention is grouped-query (4 heads, 2 KV heads)."""
    torch = pytest.importorskip("torch")
    from stts_jax.convert.reference import random_hf_molmo2
    from stts_jax.models.config import get_config

    torch.set_num_threads(2)
    cfg = get_config("tiny")
    text = cfg.text.__class__(
        **{
            **cfg.text.__dict__,
            "rope_scaling": (("factor", 2.0), ("rope_type", "linear")),
            "rope_scaling_layers": (0, 2),
        }
    )
    cfg = cfg.replace(text=text)
    model = random_hf_molmo2(cfg)
    path = str(tmp_path_factory.mktemp("tiny_hf"))
    model.save_pretrained(path)
    return cfg, model, path
