"""stts_jax: Spatio-Temporal Token Scoring and the Molmo2 video VLM in JAX/Flax."""
