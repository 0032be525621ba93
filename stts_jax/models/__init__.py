"""Molmo2 in Flax Linen: config, attention, ViT, connector, LLM, the VLM and generation."""

from stts_jax.models.config import ConfigError, Molmo2Config, get_config
from stts_jax.models.vlm import Molmo2, VideoBatch

__all__ = ["ConfigError", "Molmo2", "Molmo2Config", "VideoBatch", "get_config"]
