# ---
# jupyter:
#   kernelspec:
#     display_name: Python 3
#     language: python
#     name: python3
# ---

# %% [markdown]
# # STTS window scores on a synthetic video
#
# One test video of the synthetic set: the frames with the ground-truth object masks, the scorer's score per 3x3
# window, and the windows STTS keeps at its budget (frame 0 is always kept). Reads the run in `STTS_RUN`
# (default: the demo's STTS model); without one it trains a tiny STTS model for a few steps, whose scores are
# then close to the untrained scorer's.

# %%
import os
import tempfile

import matplotlib.pyplot as plt
import numpy as np
import tensorflow_datasets as tfds
from absl import logging

from stts_jax.data.pipeline import as_text
from stts_jax.data.sources import source
from stts_jax.evaluate.multiple_choice import window_scores
from stts_jax.train.checkpoint import restore_params, run_config
from stts_jax.train.experiment import load_config_file
from stts_jax.train.loop import train

logging.set_verbosity(logging.ERROR)  # TFDS narrates every file otherwise
tfds.disable_progress_bar()
RUN = os.environ.get("STTS_RUN", "/tmp/stts_jax_demo/runs/method=stts,k=0.7")
if not os.path.exists(os.path.join(RUN, "checkpoints")):
    RUN = tempfile.mkdtemp(prefix="stts_notebook_")
    config = load_config_file("../configs/synthetic.py", "variant=tiny,frames=6,method=stts")
    config.data.update(data_dir=os.path.join(RUN, "data"), train_examples=24, eval_examples=6, test_examples=6)
    config.train.update(steps=5, checkpoint_every=5, eval_every=0)
    train(config, RUN, progress=False)
config = run_config(RUN)
cfg, params, step = restore_params(RUN)
test, tokenizer = source(config, "test")
print(f"{RUN} at step {step}: {cfg.stts.method}, k = {cfg.stts.prune_ratio}, {len(test)} test videos")

# %%
families = [as_text(test[i]["family"]) for i in range(len(test))]
index = families.index("needle") if "needle" in families else 0  # a briefly visible object, if there is one
w = window_scores(cfg, params, test, index, tokenizer)
record = test[index]
print(as_text(record["question"]), "| family:", as_text(record["family"]))
print(f"object windows kept: {w['keep'][1:][w['objects'][1:]].mean():.2f} (frames after the first)")
print(f"scores from {w['scores'].min():.2e} to {w['scores'].max():.2e}")

rows, cols = cfg.vision.patch_grid
grid = int(np.ceil(rows / 3))
T = len(w["frames"])
low, high = np.log10(w["scores"][1:].min()), np.log10(w["scores"][1:].max())
fig, axes = plt.subplots(3, T, figsize=(1.9 * T, 6))
for t in range(T):
    axes[0, t].imshow(w["frames"][t])
    axes[0, t].contour(w["masks"][t] > 0, colors="w", linewidths=0.8)
    axes[0, t].set_title(f"t={t}")
    # log scale spanning the scores of frames 1..: ranks decide what is kept, scores trained on mostly
    # static videos sit close to 0, and frame 0 (never pruned, no previous frame) scores far higher
    axes[1, t].imshow(np.log10(w["scores"][t]).reshape(grid, grid), vmin=low, vmax=high)
    axes[2, t].imshow(w["keep"][t].reshape(grid, grid), vmin=0, vmax=1, cmap="gray")
    ys, xs = np.nonzero(w["objects"][t].reshape(grid, grid))
    axes[2, t].scatter(xs, ys, marker="x", c="r", s=20)
for ax in axes.ravel():
    ax.set_xticks([])
    ax.set_yticks([])
for row, label in enumerate(("frame + masks", "log10 window score", "kept (x: object)")):
    axes[row, 0].set_ylabel(label)
fig.tight_layout()
