"""Executes the notebooks' Python sources (jupytext percent format) into .ipynb files with their outputs.

  python notebooks/build.py            # scores.py -> scores.ipynb, ablation.py -> ablation.ipynb, executed
  STTS_RUN=/tmp/stts_jax_demo/runs/method=stts,k=0.7 STTS_SWEEP=/tmp/stts_jax_replication python notebooks/build.py

The notebooks read a trained run (STTS_RUN, default: the demo's STTS model) and a finished sweep
(STTS_SWEEP, default: the replication's); where these do not exist they make tiny ones, so the
notebooks always execute. tests/test_notebooks.py executes them the same way.
"""

from __future__ import annotations

import os
import sys

import jupytext
import nbformat
from nbclient import NotebookClient

HERE = os.path.dirname(os.path.abspath(__file__))
SOURCES = ("scores.py", "ablation.py")  # each executes into the .ipynb of the same name


def execute(source: str, timeout: int = 900) -> nbformat.NotebookNode:
    """Runs a notebook source top to bottom in a fresh kernel (cwd: notebooks/); raises on a failing cell."""
    nb = jupytext.read(source)
    nb.metadata.pop("jupytext", None)  # the .ipynb is an output, not paired with its source
    os.environ.setdefault("JAX_PLATFORMS", "cpu")  # tiny settings; no accelerator probing in the outputs
    NotebookClient(nb, timeout=timeout, kernel_name="python3", resources={"metadata": {"path": HERE}}).execute()
    return nb


def main() -> int:
    for name in SOURCES:
        path = os.path.join(HERE, name.replace(".py", ".ipynb"))
        nbformat.write(execute(os.path.join(HERE, name)), path)
        print(f"executed {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
