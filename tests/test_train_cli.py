"""The train command refuses a --workdir it cannot use (a file, a path under a file, a read-only directory)
with one line naming it and the fix, before it writes anything; a gs:// workdir is still created."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import ROOT

from stts_jax.errors import ConfigError
from stts_jax.train.checkpoint import prepare_workdir


def train_command(workdir, data_dir) -> subprocess.CompletedProcess:
    args = ["--config=configs/synthetic.py:variant=tiny,frames=4", f"--config.data.data_dir={data_dir}"]
    return subprocess.run(
        [sys.executable, "-m", "stts_jax.train", *args, f"--workdir={workdir}"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "JAX_PLATFORMS": "cpu"},
    )


def test_a_workdir_that_is_a_file_is_refused_in_one_line_before_anything_is_written(tmp_path):
    workdir, data_dir = tmp_path / "notes.txt", tmp_path / "data"
    workdir.write_text("not a run")
    run = train_command(workdir, data_dir)
    assert run.returncode == 1, run.stderr[-3000:]
    last_line = run.stderr.strip().splitlines()[-1]
    assert last_line == f"error: --workdir {workdir} is a file; pass a directory (a new one, or a run's to resume it)."
    assert "Traceback" not in run.stderr
    assert workdir.read_text() == "not a run" and not data_dir.exists()  # nothing built, nothing written


def test_a_workdir_under_a_file_is_refused_naming_it(tmp_path):
    (tmp_path / "notes.txt").write_text("")
    workdir = tmp_path / "notes.txt" / "run"
    with pytest.raises(ConfigError, match=rf"^--workdir {workdir} cannot be created \(.*Not a directory.*\); pass"):
        prepare_workdir(str(workdir))


@pytest.fixture
def unwritable_directory(tmp_path):
    """A directory this user cannot write to: a read-only one, or for root, whom permissions do not stop,
    /proc/sys (a read-only mount in containers)."""
    if os.geteuid() != 0:
        path = tmp_path / "read_only"
        path.mkdir(mode=0o555)
        yield path
        path.chmod(0o755)
    elif not os.access("/proc/sys", os.W_OK):
        yield Path("/proc/sys")
    else:
        pytest.skip("running as root with a writable /proc/sys: no directory that root cannot write to")


def test_a_read_only_workdir_is_refused_in_one_line_before_anything_is_written(unwritable_directory, tmp_path):
    before, data_dir = sorted(os.listdir(unwritable_directory)), tmp_path / "data"
    run = train_command(unwritable_directory, data_dir)
    assert run.returncode == 1, run.stderr[-3000:]
    last_line = run.stderr.strip().splitlines()[-1]
    fix = "pass one you can write to, or change its permissions."
    assert last_line == f"error: --workdir {unwritable_directory} is not writable; {fix}"
    assert sorted(os.listdir(unwritable_directory)) == before and not data_dir.exists()


def test_a_new_local_workdir_is_created_and_an_existing_one_kept(tmp_path):
    workdir = tmp_path / "a" / "b" / "run"
    assert prepare_workdir(str(workdir)).is_dir()
    (workdir / "metrics.jsonl").write_text("{}\n")
    prepare_workdir(str(workdir))
    assert (workdir / "metrics.jsonl").read_text() == "{}\n"


def test_a_gcs_workdir_is_created_and_a_gcs_file_refused(gcs):
    prepare_workdir("gs://bucket/runs/new")  # object stores have no directories: nothing to refuse
    gcs.pipe("gs://bucket/runs/notes.txt", b"not a run")
    with pytest.raises(ConfigError, match=r"^--workdir gs://bucket/runs/notes.txt is a file;"):
        prepare_workdir("gs://bucket/runs/notes.txt")
