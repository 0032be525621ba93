# ---
# jupyter:
#   kernelspec:
#     display_name: Python 3
#     language: python
#     name: python3
# ---

# %% [markdown]
# # Ablation plots from a sweep
#
# Aggregates a finished sweep (`STTS_SWEEP`, default: the replication's output) into its table and the two
# plots: accuracy vs pruning ratio and accuracy vs forward FLOPs. Without a sweep it runs a tiny one (two runs,
# a few steps), so the plots show the plumbing, not a result.

# %%
import glob
import os
import tempfile

import tensorflow_datasets as tfds
from absl import logging
from IPython.display import Image, Markdown, display

from stts_jax.sweep.aggregate import aggregate
from stts_jax.sweep.runner import parse_grid, run_sweep

logging.set_verbosity(logging.ERROR)
tfds.disable_progress_bar()
SWEEP = os.environ.get("STTS_SWEEP", "/tmp/stts_jax_replication")
if not glob.glob(os.path.join(SWEEP, "*", "eval_test*.json")):
    SWEEP = tempfile.mkdtemp(prefix="stts_sweep_")
    fixed = {"train.steps": 2, "train.eval_every": 0, "data.data_dir": os.path.join(SWEEP, "data")}
    fixed.update({"data.train_examples": 16, "data.eval_examples": 4, "data.test_examples": 6})
    runs = parse_grid("stts.method=none") + parse_grid("stts.method=random;stts.prune_ratio=0.5")
    run_sweep("../configs/synthetic.py:variant=tiny,frames=4", runs, SWEEP, fixed=fixed, progress=False)
display(Markdown(aggregate(SWEEP)))

# %%
display(Image(os.path.join(SWEEP, "accuracy_vs_ratio.png")))

# %%
display(Image(os.path.join(SWEEP, "accuracy_vs_flops.png")))
