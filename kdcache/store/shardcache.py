"""A bounded local directory of whole shard files of a remote store, so later epochs read local disk, not S3.

A store that does not fit the RAM budget is streamed: every epoch reads every shard again. With a shard cache
(``open_store(url, shard_cache="/scratch/kd", shard_cache_bytes=...)``) a shard is fetched once as one object,
checked against the SHA-256 the manifest pins for it, and kept as ``<sha256>.shard`` in the directory; inner chunks
read again later are range reads of that local file, each still checked against the XXH3 its bytes had when the
shard was verified (:mod:`kdcache.store.shardbytes`).

Nothing in the directory is trusted: its names and files may be stale, truncated or edited. Every whole-shard read
from it is hashed again (SHA-256 of local bytes, ~1 GB/s), so a new process re-verifies each cached shard when it
takes it into use; a file that does not match is deleted, fetched again and never decoded. Files are written to a
temporary name, fsynced and renamed, so a fetch killed half-way leaves a ``.partial`` file that is never read (and
is removed later), never a short ``.shard``. Several processes (DataLoader workers, DDP ranks) may share one
directory: writes are atomic, eviction runs under an ``flock``, and a file another process evicted is fetched again.

The directory is bounded by ``max_bytes``: least recently used shards (by modification time, touched on every use)
are evicted first. A shard larger than the bound, or a full disk, degrades to direct streaming with one warning.
After a shard is taken into use, the next ``prefetch`` shards of the same array (by index) are fetched in one
background thread per process, so the cache fills ahead of the reads.
"""

from __future__ import annotations

import errno
import fcntl
import functools
import hashlib
import logging
import os
import time
import warnings
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor, wait
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import Any

from kdcache.atomic import TEMP_SUFFIX, atomic_write_bytes
from kdcache.errors import ConfigError
from kdcache.store.manifest import FileDigest

LOG = logging.getLogger(__name__)
SUFFIX = ".shard"
STALE_PARTIAL_S = 600  # a temporary file this old belongs to a fetch that was killed, not one still running
DEFAULT_SHARD_CACHE_BYTES = 16 * 1024**3


class ShardCache:
    """Whole shard files of remote stores in a local directory, bounded by ``max_bytes``, LRU-evicted.

    Picklable: a DataLoader worker or DDP rank gets the directory and the bound, and re-verifies what it uses.
    """

    def __init__(
        self, directory: str | os.PathLike[str], max_bytes: int = DEFAULT_SHARD_CACHE_BYTES, *, prefetch: int = 2
    ) -> None:
        if max_bytes < 0 or prefetch < 0:
            raise ConfigError(
                f"shard cache {directory}: shard_cache_bytes ({max_bytes}) and prefetch ({prefetch}) must be >= 0"
            )
        self.directory = Path(directory).resolve()
        self.max_bytes = int(max_bytes)
        self.prefetch_depth = prefetch
        self._warned: set[str] = set()
        self._pool: ThreadPoolExecutor | None = None
        self._pool_pid = os.getpid()
        self._pending: dict[str, Future[None]] = {}
        try:
            self.directory.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise ConfigError(
                f"shard cache directory {str(self.directory)!r} cannot be created ({exc}); pass a "
                "writable directory as shard_cache, or none to stream from the store"
            ) from None

    def __repr__(self) -> str:
        return f"ShardCache({str(self.directory)!r}, max_bytes={self.max_bytes:,})"

    def __getstate__(self) -> dict[str, Any]:
        return {"directory": str(self.directory), "max_bytes": self.max_bytes, "prefetch": self.prefetch_depth}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__(state["directory"], state["max_bytes"], prefetch=state["prefetch"])  # type: ignore[misc]  # unpickled: rebuilt as made

    def file_of(self, digest: FileDigest) -> Path:
        """Where the shard with this digest is kept (named by content, so stores and renames cannot collide)."""
        return self.directory / f"{digest.sha256}{SUFFIX}"

    def shard(self, digest: FileDigest, fetch: Callable[[], bytes]) -> bytes:
        """The shard's bytes, SHA-256 checked: the cached file if it matches, else ``fetch()`` (which reads the
        store and checks the digest itself), kept in the directory if it fits. A shard being prefetched is waited
        for, not fetched twice."""
        pending = self._pending.get(digest.sha256) if self._pool_pid == os.getpid() else None
        if pending is not None:
            wait([pending])
        raw = self._cached(digest)
        if raw is not None:
            return raw
        raw = fetch()
        self._keep(digest, raw)
        return raw

    def keeps(self, digest: FileDigest) -> bool:
        """Whether this shard can be kept (it fits the bound and no write has failed): otherwise read directly."""
        return digest.nbytes <= self.max_bytes and "write" not in self._warned

    def read_range(self, digest: FileDigest, start: int, stop: int) -> bytes | None:
        """Bytes ``[start, stop)`` of the cached file, or ``None`` when it is not cached. The caller checks them
        against the chunk digest of the verified shard (and calls :meth:`discard` when they differ)."""
        path = self.file_of(digest)
        try:
            with open(path, "rb") as f:
                f.seek(start)
                data = f.read(stop - start)
        except FileNotFoundError:
            return None
        _touch(path)
        return data

    def discard(self, digest: FileDigest, why: str) -> None:
        """Delete a cached file that does not hold the shard's bytes, with a warning naming it."""
        path = self.file_of(digest)
        path.unlink(missing_ok=True)
        warnings.warn(
            f"shard cache {str(self.directory)!r}: {path.name} {why}; deleted, the shard is fetched "
            "again from the store",
            stacklevel=3,
        )

    def prefetch(self, jobs: list[tuple[FileDigest, Callable[[], bytes]]]) -> None:
        """Fetch these shards in the background (one thread per process, at most ``prefetch`` queued)."""
        if self._pool is None or self._pool_pid != os.getpid():  # threads do not survive a fork
            self._pool, self._pool_pid, self._pending = ThreadPoolExecutor(1, "kdcache-prefetch"), os.getpid(), {}
        for digest, fetch in jobs:
            if len(self._pending) >= self.prefetch_depth:
                return
            if digest.sha256 in self._pending or self.file_of(digest).exists() or not self.keeps(digest):
                continue
            future = self._pool.submit(self._prefetch_one, digest, fetch)
            self._pending[digest.sha256] = future  # forgotten once done (at once, if it is done already)
            future.add_done_callback(functools.partial(self._forget, digest.sha256))

    def _forget(self, key: str, _: Future[None]) -> None:
        """Drop a finished background fetch from the pending ones (its future's done callback)."""
        self._pending.pop(key, None)

    def wait(self) -> None:
        """Wait until this process's background fetches are done (before measuring, or before exit)."""
        if self._pool is not None and self._pool_pid == os.getpid():
            self._pool.shutdown(wait=True)
            self._pool = None

    def _prefetch_one(self, digest: FileDigest, fetch: Callable[[], bytes]) -> None:
        try:
            if not self.file_of(digest).exists():
                self._keep(digest, fetch())
        except Exception as exc:  # noqa: BLE001  (the foreground read of this shard raises the typed error, if it persists)
            LOG.debug("prefetch of %s failed: %s", digest.key, exc)

    def _cached(self, digest: FileDigest) -> bytes | None:
        """The cached file's bytes if they have the shard's size and SHA-256; a file that has not is deleted."""
        path = self.file_of(digest)
        try:
            with open(path, "rb") as f:
                raw = f.read(digest.nbytes + 1)
        except FileNotFoundError:
            return None
        if len(raw) != digest.nbytes or hashlib.sha256(raw).hexdigest() != digest.sha256:
            self.discard(digest, f"is not the shard {digest.key} it is named for ({len(raw)} bytes, SHA-256 differs)")
            return None
        _touch(path)
        return raw

    def _keep(self, digest: FileDigest, raw: bytes) -> None:
        """Write the verified shard atomically (:mod:`kdcache.atomic`) after evicting LRU files to make room;
        a shard over the bound or a write that fails (disk full) is not kept, with one warning."""
        if len(raw) > self.max_bytes:
            self._warn_once(
                "small",
                f"shard cache {str(self.directory)!r}: shard {digest.key} ({len(raw):,} bytes) "
                f"is larger than shard_cache_bytes ({self.max_bytes:,}); shards are streamed from the "
                "store instead. Raise shard_cache_bytes above the shard size to cache them",
            )
            return
        try:
            with self._locked():
                self._evict(len(raw))
                atomic_write_bytes(self.file_of(digest), raw)
        except OSError as exc:
            full = exc.errno in (errno.ENOSPC, errno.EDQUOT)
            self._warn_once(
                "write",
                f"shard cache {str(self.directory)!r}: cannot keep shard {digest.key} "
                f"({'the disk is full' if full else exc}); shards are streamed from the store instead. "
                "Free space or point shard_cache at another directory",
            )

    def _evict(self, need: int) -> None:
        """Delete least recently used shard files until ``need`` more bytes fit the bound, and stale temp files."""
        now, files = time.time(), []
        for entry in os.scandir(self.directory):
            if entry.name.endswith(TEMP_SUFFIX):
                if now - _mtime(entry) > STALE_PARTIAL_S:
                    Path(entry.path).unlink(missing_ok=True)
            elif entry.name.endswith(SUFFIX):
                files.append((_mtime(entry), _size(entry), entry.path))
        total = sum(size for _, size, _ in files)
        for _, size, path in sorted(files):
            if total + need <= self.max_bytes:
                break
            Path(path).unlink(missing_ok=True)
            total -= size

    @contextmanager
    def _locked(self) -> Iterator[None]:
        """One process at a time evicts and writes, so two never count the same free space."""
        with open(self.directory / ".lock", "a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(lock, fcntl.LOCK_UN)

    def _warn_once(self, kind: str, message: str) -> None:
        if kind not in self._warned:
            self._warned.add(kind)
            warnings.warn(message, stacklevel=4)


def _touch(path: Path) -> None:
    """Mark a file as just used (LRU order); a file another process just evicted is no error."""
    with suppress(FileNotFoundError):
        os.utime(path)


def _mtime(entry: os.DirEntry[str]) -> float:
    try:
        return entry.stat().st_mtime
    except FileNotFoundError:
        return 0.0


def _size(entry: os.DirEntry[str]) -> int:
    try:
        return entry.stat().st_size
    except FileNotFoundError:
        return 0
