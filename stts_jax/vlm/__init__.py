"""The Molmo2 video VLM with STTS (`model`), its batch contract, and KV-cache generation."""
