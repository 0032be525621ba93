"""Both notebooks execute offline in a fresh kernel on tiny settings and draw their figures."""

from __future__ import annotations

import os
import shutil
import sys

import pytest
from conftest import ROOT

sys.path.insert(0, os.path.join(ROOT, "notebooks"))
from build import NOTEBOOKS, execute  # noqa: E402


@pytest.mark.parametrize("name", sorted(NOTEBOOKS))
def test_notebook_executes_and_draws(name, tmp_path, monkeypatch):
    monkeypatch.setenv("STTS_RUN", str(tmp_path / "no_run"))  # no trained run / sweep: tiny ones are made
    monkeypatch.setenv("STTS_SWEEP", str(tmp_path / "no_sweep"))
    path = tmp_path / name
    shutil.copy(os.path.join(ROOT, "notebooks", name), path)
    nb = execute(str(path), timeout=600)
    outputs = [o for cell in nb.cells if cell.cell_type == "code" for o in cell.outputs]
    assert not [o for o in outputs if o.output_type == "error"]
    assert sum("image/png" in o.get("data", {}) for o in outputs) >= (1 if name == "scores.ipynb" else 2)
