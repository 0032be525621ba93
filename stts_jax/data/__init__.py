"""Video-QA data: decoding, Molmo2 preprocessing, datasets and the grain pipeline."""

from stts_jax.data.video import decode_video

__all__ = ["decode_video"]
