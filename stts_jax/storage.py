"""Folders on a local disk or in an object store (gs://, or any fsspec URL), copied whole between the two for
the libraries that open local files only: array_record (its reader and writer take a path; a gs:// path fails
in the writer and hangs in the reader, measured with array_record 0.8) and safetensors (it maps the file)."""

from __future__ import annotations

import contextlib
import os
import posixpath
import shutil
import tempfile
from collections.abc import Iterator, Sequence

import fsspec

from stts_jax.errors import ConfigError

CACHE_ENV = "STTS_JAX_CACHE"  # the folder holding this host's copies of remote datasets


def is_remote(path: str | os.PathLike) -> bool:
    """Whether `path` is a URL (gs://bucket/...) rather than a local path."""
    return "://" in os.fspath(path)


def cache_root() -> str:
    """Where this host keeps its copies of remote datasets: $STTS_JAX_CACHE, else a folder in the temp dir."""
    return os.environ.get(CACHE_ENV) or os.path.join(tempfile.gettempdir(), "stts_jax_cache")


def local_mirror(url: str) -> str:
    """The folder under cache_root() that mirrors the remote folder `url` (gs://bucket/data -> ROOT/gs/bucket/data)."""
    scheme, _, rest = url.partition("://")
    parts = [part for part in rest.split("/") if part]
    if not parts or any(part in (".", "..") for part in parts):
        raise ConfigError(f"{url}: expected SCHEME://BUCKET/PATH without '.' or '..' parts.")
    return os.path.join(cache_root(), scheme, *parts)


def _filesystem(url: str) -> tuple[fsspec.AbstractFileSystem, str]:
    fs, root = fsspec.core.url_to_fs(url)
    fs.invalidate_cache()  # another process may have written since this one last listed
    return fs, root.rstrip("/")


def exists(url: str) -> bool:
    fs, path = _filesystem(url)
    return fs.exists(path)


def download(url: str, local: str) -> None:
    """Copies the remote folder `url` to the local folder `local` (which must not exist yet), whole: into a
    hidden sibling first, renamed to `local` when complete. A concurrent copy of the same folder on this host
    (another process) wins or loses as a whole. ConfigError if the local disk has no room for it."""
    fs, root = _filesystem(url)
    sizes = {path: info["size"] for path, info in fs.find(root, detail=True).items()}
    parent = os.path.dirname(os.path.abspath(local))
    os.makedirs(parent, exist_ok=True)
    needed, free = sum(sizes.values()), shutil.disk_usage(parent).free
    if needed > free:
        raise ConfigError(
            f"{url} ({needed / 2**30:.2f} GiB) does not fit in {parent} ({free / 2**30:.2f} GiB free): set "
            f"{CACHE_ENV} to a folder on a disk with room, or mount the bucket (gcsfuse) and pass the mount point "
            "as a local path."
        )
    staging = tempfile.mkdtemp(prefix=f".{os.path.basename(local)}.partial-", dir=parent)
    try:
        for path in sizes:
            target = os.path.join(staging, posixpath.relpath(path, root))
            os.makedirs(os.path.dirname(target), exist_ok=True)
            fs.get_file(path, target)
        os.rename(staging, local)
    except OSError:
        if not os.path.isdir(local):  # else another process copied it first
            raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def upload(local: str, url: str, last: Sequence[str] = ()) -> None:
    """Copies every file of the local folder `local` into the remote folder `url`, the files named in `last`
    (relative paths) after all others: an object store has no atomic rename, so a reader that looks for those
    never sees a folder copied in part. If a copy fails, the files copied so far are removed."""
    fs, root = _filesystem(url)
    names = sorted(
        os.path.relpath(os.path.join(folder, name), local) for folder, _, files in os.walk(local) for name in files
    )
    names.sort(key=lambda name: name in last)  # stable: the others keep their order
    copied = []
    try:
        for name in names:
            target = f"{root}/{name.replace(os.sep, '/')}"
            fs.put_file(os.path.join(local, name), target)
            copied.append(target)
    except BaseException:
        with contextlib.suppress(Exception):
            fs.rm(copied)
        raise


@contextlib.contextmanager
def local_copy(path: str) -> Iterator[str]:
    """`path` itself when it is local; a remote folder downloaded into a temporary local folder, removed after."""
    if not is_remote(path):
        yield path
        return
    scratch = tempfile.mkdtemp(prefix="stts_jax_download_")
    try:
        local = os.path.join(scratch, posixpath.basename(path.rstrip("/")))
        download(path, local)
        yield local
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
