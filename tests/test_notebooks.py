"""Both notebooks execute from their Python sources, offline, in a fresh kernel on tiny settings, and draw."""

from __future__ import annotations

import os
import sys

import pytest
from conftest import ROOT

sys.path.insert(0, os.path.join(ROOT, "notebooks"))
from build import SOURCES, execute  # noqa: E402


# each trains or runs a model (ablation.py a tiny sweep, about a minute; scores.py ~45 s): run on demand with
# -m slow, like notebooks/build.py
@pytest.mark.slow
@pytest.mark.parametrize("name", SOURCES)
def test_notebook_executes_and_draws(name, tmp_path, monkeypatch):
    monkeypatch.setenv("STTS_RUN", str(tmp_path / "no_run"))  # no trained run / sweep: tiny ones are made
    monkeypatch.setenv("STTS_SWEEP", str(tmp_path / "no_sweep"))
    nb = execute(os.path.join(ROOT, "notebooks", name), timeout=600)
    outputs = [o for cell in nb.cells if cell.cell_type == "code" for o in cell.outputs]
    assert not [o for o in outputs if o.output_type == "error"]
    assert sum("image/png" in o.get("data", {}) for o in outputs) >= (1 if name == "scores.py" else 2)
