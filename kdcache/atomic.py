"""Atomic file replacement: readers see the old file or the whole new one, never a part, and a failed write leaves
no temporary file behind. Every local file kdcache writes for keeps goes through here.

A write goes to a fresh hidden name in the target's directory (``.<name>.<uuid>.partial``: unique per writer, so
concurrent writers never share a temporary file, and the same file system, so the rename is atomic), is flushed and
fsynced, replaces the target with ``os.replace``, and then the directory is fsynced so the rename itself survives a
power cut. Any error on the way (including one raised by the caller's writer) unlinks the temporary file and
propagates. ``durable=False`` skips both fsyncs for files whose loss in a crash is detected and repaired elsewhere
(shard files pinned by a fsynced commit record); the replacement is still atomic.
"""

from __future__ import annotations

import errno
import os
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import BinaryIO

TEMP_SUFFIX = ".partial"  # every temporary name ends so; cleaners of killed writers' leftovers look for it
# fsync of a directory is not supported everywhere (some network and FUSE file systems answer so); the rename is
# atomic still, only its durability across a power cut is then the file system's own
_NO_DIRECTORY_FSYNC = {errno.EINVAL, errno.ENOTSUP, errno.EOPNOTSUPP, errno.EBADF}


def temporary_name(path: Path) -> Path:
    """A fresh hidden name beside ``path`` for one writer alone. Files opened there get the umask's permissions
    (``mkstemp``'s 0600 would hide a shared cache from other users)."""
    return path.with_name(f".{path.name}.{uuid.uuid4().hex}{TEMP_SUFFIX}")


@contextmanager
def atomic_path(path: str | Path, *, durable: bool = True) -> Iterator[Path]:
    """A temporary path for a writer that wants a file name (safetensors, h5py); when the block ends without an
    error the file written there replaces ``path``, otherwise it is removed. The parent directory must exist."""
    path = Path(path)
    with _replacing(path, durable) as tmp:
        yield tmp
        if durable:
            _fsync_file(tmp)


@contextmanager
def atomic_file(path: str | Path, *, durable: bool = True) -> Iterator[BinaryIO]:
    """A binary file to stream into; when the block ends without an error it replaces ``path``, otherwise it is
    removed. The parent directory must exist."""
    path = Path(path)
    with _replacing(path, durable) as tmp, open(tmp, "xb") as out:
        yield out
        out.flush()
        if durable:
            os.fsync(out.fileno())


def atomic_write_bytes(path: str | Path, data: bytes | memoryview, *, durable: bool = True) -> None:
    """Replace ``path`` with ``data`` atomically (see the module docstring)."""
    with atomic_file(path, durable=durable) as out:
        out.write(data)


def atomic_write_text(path: str | Path, text: str, *, durable: bool = True) -> None:
    """Replace ``path`` with ``text`` (UTF-8) atomically (see the module docstring)."""
    atomic_write_bytes(path, text.encode("utf-8"), durable=durable)


@contextmanager
def _replacing(path: Path, durable: bool) -> Iterator[Path]:
    """Yield a temporary name beside ``path``; rename it over ``path`` after the block, or unlink it on an error."""
    tmp = temporary_name(path)
    try:
        yield tmp
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    if durable:
        fsync_directory(path.parent)


def _fsync_file(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_directory(directory: Path) -> None:
    """Make the directory's entries (a rename, a new file) durable; a no-op where the platform cannot (Windows opens
    no directory, some file systems refuse fsync on one)."""
    if os.name == "nt":
        return
    fd = os.open(directory, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    try:
        os.fsync(fd)
    except OSError as exc:
        if exc.errno not in _NO_DIRECTORY_FSYNC:
            raise
    finally:
        os.close(fd)
