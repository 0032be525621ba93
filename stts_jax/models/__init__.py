"""Molmo2's parts in Flax Linen: config, attention, layers, ViT, connector, LLM (the VLM is `stts_jax.vlm`)."""

from stts_jax.models.config import Molmo2Config
from stts_jax.models.variants import get_config

__all__ = ["Molmo2Config", "get_config"]
