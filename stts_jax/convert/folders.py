"""Output folders written whole or not at all: an export or conversion that fails half-way (bad input found
late, a full disk) leaves nothing behind, and an existing folder with files in it is never touched. A folder
on gs:// is written locally and uploaded when complete, its `config.json` last: an object store has no
atomic rename, and every folder written here is a checkpoint its readers find by that file."""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from collections.abc import Iterator

from etils import epath

from stts_jax import storage
from stts_jax.convert.hf import HF_CONFIG_FILE
from stts_jax.errors import CheckpointError


def check_new_folder(path: str) -> None:
    """CheckpointError unless `path` (local or gs://) is free for an output folder: it does not exist, or is an
    empty directory."""
    folder = epath.Path(path)
    if folder.exists() and not folder.is_dir():
        raise CheckpointError(f"{path} is a file; the output must be a new or empty directory (nothing was written).")
    if folder.is_dir() and any(folder.iterdir()):
        raise CheckpointError(f"{path} is not empty; choose a new output directory (nothing was overwritten).")


@contextlib.contextmanager
def new_folder(path: str) -> Iterator[str]:
    """Yields a local folder to write into; on success it becomes `path`, on any error it is removed.

    `path` must be new or empty (check_new_folder); its parent directories are created. Locally the folder
    is a hidden sibling of `path`, renamed; for a remote `path`, a temporary folder uploaded into it.
    """
    if storage.is_remote(path):
        check_new_folder(path)
        staging = tempfile.mkdtemp(prefix="stts_jax_export_")
        try:
            yield staging
            storage.upload(staging, path, last=[HF_CONFIG_FILE])
        finally:
            shutil.rmtree(staging, ignore_errors=True)
        return
    path = os.path.abspath(path)
    check_new_folder(path)
    parent, name = os.path.split(path)
    os.makedirs(parent, exist_ok=True)
    staging = tempfile.mkdtemp(prefix=f".{name}.partial-", dir=parent)
    try:
        yield staging
        if os.path.isdir(path):
            os.rmdir(path)  # empty (checked above); rename cannot replace a directory on every platform
        os.rename(staging, path)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
