"""Training: optimizer with parameter groups, loss, train step (mesh, checkpoints and loop: issue 5)."""
