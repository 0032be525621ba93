"""Video-QA data: Molmo2 preprocessing, datasets and the grain pipeline."""
