"""Export a trained run for inference (Hugging Face Molmo2 or params-only Orbax), and load it back."""
