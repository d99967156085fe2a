"""The page cache state of files: make them cold (evicted) or warm (read once), and check which it is.

A store several times larger than RAM cannot be written on a small machine within a benchmark's time, so the cold
case is emulated: every file of the store is flushed and dropped from the page cache with
``posix_fadvise(POSIX_FADV_DONTNEED)`` before a pass, and :func:`resident_fraction` (``mincore``) confirms how much
of it is still cached. Reads then come from the disk as they would for a store that does not fit in memory
(whatever caching the disk or the hypervisor does underneath stays, as it would for a real store). Linux only.
"""

from __future__ import annotations

import ctypes
import mmap
import os
from pathlib import Path

import numpy as np

CAN_EVICT = hasattr(os, "posix_fadvise") and hasattr(os, "POSIX_FADV_DONTNEED")


def files_under(path: Path) -> list[Path]:
    """Every regular file at or below ``path``."""
    return [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file())


def evict(paths: list[Path]) -> None:
    """Write back and drop every page of ``paths`` from the page cache (pages mapped by a process stay)."""
    for path in paths:
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)  # dirty pages cannot be dropped
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)


def warm(paths: list[Path]) -> None:
    """Read every byte of ``paths`` once, so the next reads come from the page cache."""
    for path in paths:
        with open(path, "rb", buffering=0) as f:
            while f.read(8 << 20):
                pass


def resident_fraction(paths: list[Path]) -> float | None:
    """The fraction of the bytes of ``paths`` held in the page cache (``mincore``), or None where unsupported."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        mincore = libc.mincore
    except (OSError, AttributeError):
        return None
    page = mmap.PAGESIZE
    resident = total = 0
    for path in paths:
        size = path.stat().st_size
        if size == 0:
            continue
        with open(path, "rb") as f, mmap.mmap(f.fileno(), size, access=mmap.ACCESS_READ) as mapped:
            address = np.frombuffer(mapped, dtype=np.uint8).ctypes.data
            pages = -(-size // page)
            vector = (ctypes.c_ubyte * pages)()
            if mincore(ctypes.c_void_p(address), ctypes.c_size_t(size), vector) != 0:
                return None
            resident += int(np.ctypeslib.as_array(vector).__and__(1).sum())
            total += pages
    return resident / total if total else 1.0
