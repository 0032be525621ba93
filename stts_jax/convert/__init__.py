"""Checkpoint conversion: Hugging Face Molmo2 directories and params-only Orbax checkpoints."""
