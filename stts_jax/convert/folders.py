"""Output folders written whole or not at all: an export or conversion that fails half-way (bad input found
late, a full disk) leaves nothing behind, and an existing folder with files in it is never touched."""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from collections.abc import Iterator

from stts_jax.errors import CheckpointError


def check_new_folder(path: str) -> None:
    """CheckpointError unless `path` is free for an output folder: it does not exist, or is an empty directory."""
    if os.path.exists(path) and not os.path.isdir(path):
        raise CheckpointError(f"{path} is a file; the output must be a new or empty directory (nothing was written).")
    if os.path.isdir(path) and os.listdir(path):
        raise CheckpointError(f"{path} is not empty; choose a new output directory (nothing was overwritten).")


@contextlib.contextmanager
def new_folder(path: str) -> Iterator[str]:
    """Yields a hidden sibling folder to write into; on success it becomes `path`, on any error it is removed.

    `path` must be new or empty (check_new_folder); its parent directories are created.
    """
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
