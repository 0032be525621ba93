"""STTS: window scoring, budgets, pruning, packing of kept tokens, the auxiliary loss, and baselines."""
