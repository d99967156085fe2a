"""Byte-level access to a store's root, local or any fsspec URL, and the matching zarr store.

This is the one place that knows whether a store is on local disk or remote. Local writes are atomic
(:mod:`kdcache.atomic`: temp file, fsync, ``os.replace``); remote object stores write each object in a single PUT,
which is atomic by itself.
"""

from __future__ import annotations

import copy
import errno
import os
import stat
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import fsspec
from zarr.abc.store import Store

from kdcache.atomic import atomic_write_bytes
from kdcache.errors import ConfigError, KdcacheError, StoreFormatError, StoreIOError

CREDENTIAL_OPTIONS = frozenset({"key", "secret", "token", "password", "aws_access_key_id", "aws_secret_access_key"})
# Object stores: fail within bounded time and retry transient errors (5xx, throttling, dropped connections) before
# reporting them, instead of hanging or failing on the first hiccup. Users can override any of these.
S3_DEFAULTS: dict[str, Any] = {
    "config_kwargs": {"connect_timeout": 10, "read_timeout": 60, "retries": {"max_attempts": 6, "mode": "standard"}},
}


class StoreLocation:
    """The root of a store: ``runs/x/train.zarr``, ``file:///...`` or ``s3://bucket/prefix/train.zarr``.

    Credentials in ``storage_options`` are used for I/O but never shown, logged or pickled: a copy sent to another
    process (a dask worker) takes its credentials from that process's environment instead.
    """

    def __init__(self, url: str | Path, storage_options: dict[str, Any] | None = None) -> None:
        self.url = _without_credentials(str(url))
        self.storage_options = dict(storage_options or {})
        protocol = fsspec.core.split_protocol(self.url)[0]
        if protocol not in (None, "file", "local"):
            # Dask workers and other processes write to the same store: a cached directory listing goes stale.
            self.storage_options.setdefault("use_listings_cache", False)
        if protocol in ("s3", "s3a"):
            for key, value in S3_DEFAULTS.items():
                self.storage_options.setdefault(key, value)
        self._fs, self.root = fsspec.core.url_to_fs(self.url, **self._options())
        self._pid = os.getpid()
        self.is_local = "file" in _protocols(self._fs)
        if self.is_local:
            self.root = str(Path(self.root).resolve())

    @property
    def fs(self) -> fsspec.AbstractFileSystem:
        """The filesystem, made again in a forked child (DataLoader workers): async ones such as s3fs are not
        fork-safe, and fsspec's instance cache hands a child a fresh one."""
        if self._pid != os.getpid():
            self._fs, _ = fsspec.core.url_to_fs(self.url, **self._options())
            self._pid = os.getpid()
        return self._fs

    def __repr__(self) -> str:
        return f"StoreLocation({self.url!r})"

    def __getstate__(self) -> dict[str, Any]:
        safe = {k: v for k, v in self.storage_options.items() if k not in CREDENTIAL_OPTIONS}
        return {"url": self.url, "storage_options": safe}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__(state["url"], state["storage_options"])  # type: ignore[misc]  # unpickled: rebuilt as made

    def zarr_store(self, *, read_only: bool) -> Store:
        """A zarr v3 store over the same root."""
        from zarr.storage import FsspecStore, LocalStore

        if self.is_local:
            return LocalStore(self.root, read_only=read_only)
        return FsspecStore.from_url(self.url, storage_options=self._options(), read_only=read_only)

    def _options(self) -> dict[str, Any]:
        """A private copy of the storage options for a filesystem: botocore edits its retry settings in place."""
        return copy.deepcopy(self.storage_options)

    def _path(self, key: str) -> str:
        return f"{self.root.rstrip('/')}/{key}"

    def exists(self, key: str = "") -> bool:
        return bool(self.fs.exists(self._path(key) if key else self.root))

    def read_bytes(self, key: str, *, limit: int | None = None) -> bytes:
        """The object's bytes; ``FileNotFoundError`` if it does not exist.

        A store's files come from anyone, so a local key must be a regular file (not a FIFO, a device or a symlink
        to one: reading those blocks or never ends), and with ``limit`` no more than ``limit`` bytes are read: a
        larger object is a :class:`StoreFormatError` naming the key and the limit, raised before it is read."""
        path = self._path(key)
        if self.is_local:
            data = _read_regular_file(path, limit, lambda why: self._refusal(key, why))
        elif limit is None:
            data = bytes(self.fs.cat_file(path))
        else:  # the stated size first (one HEAD, as an unranged read makes too), then at most limit + 1 bytes
            size = int(self.fs.size(path))
            if size > limit:
                raise self._refusal(
                    key, f"is {size:,} bytes, over the {limit:,}-byte limit kdcache reads for this file"
                )
            data = bytes(self.fs.cat_file(path, start=0, end=limit + 1))
        if limit is not None and len(data) > limit:
            raise self._refusal(key, f"holds more than {limit:,} bytes, the most kdcache reads for this file")
        return data

    def _refusal(self, key: str, why: str) -> StoreFormatError:
        return StoreFormatError(
            f"store {self.url!r}: {key} {why}. Real stores stay far below kdcache's limits, so the file is damaged "
            "or was planted: restore it from a copy of the store or rebuild the store with `kdcache precompute`"
        )

    def read_range(self, key: str, start: int, stop: int) -> bytes:
        """Bytes ``[start, stop)`` of the object; ``FileNotFoundError`` if it does not exist."""
        return bytes(self.fs.cat_file(self._path(key), start=start, end=stop))

    def size(self, key: str) -> int | None:
        """Size in bytes, or ``None`` when the object does not exist."""
        try:
            return int(self.fs.size(self._path(key)))
        except FileNotFoundError:
            return None

    def write_bytes(self, key: str, data: bytes | memoryview, *, durable: bool = True) -> None:
        """Write an object so that readers see either the old or the new bytes, never a mix. ``durable=False``
        skips the local fsync, as zarr's own writes do: for shard files, whose size and SHA-256 the commit record
        (fsynced) pins, so a shard lost in a crash is found and rewritten (:meth:`StoreBuilder.valid_commits`)."""
        path = self._path(key)
        if not self.is_local:
            self.fs.pipe_file(path, bytes(data))
            return
        os.makedirs(os.path.dirname(path), exist_ok=True)
        atomic_write_bytes(path, data, durable=durable)

    def create_exclusive(self, key: str, data: bytes) -> bool:
        """Create an object only if none exists (``O_EXCL`` locally, a conditional PUT remotely); False if one does."""
        path = self._path(key)
        if self.is_local:
            os.makedirs(os.path.dirname(path), exist_ok=True)
            try:
                fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                return False
            with os.fdopen(fd, "wb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
            return True
        try:
            self.fs.pipe_file(path, data, mode="create")
        except FileExistsError:
            return False
        except OSError as exc:  # some S3 servers answer 412 without naming the If-None-Match condition
            if "precondition" in str(exc).lower():
                return False
            raise
        return True

    def list(self, prefix: str) -> list[str]:
        """Keys (relative to the root) of every object under ``prefix``, sorted."""
        base = self._path(prefix)
        if not self.fs.exists(base):
            return []
        root = self.root.rstrip("/") + "/"
        return sorted(p[len(root) :] if p.startswith(root) else p for p in self.fs.find(base))

    def delete(self, key: str) -> None:
        path = self._path(key)
        if self.fs.exists(path):
            self.fs.rm(path, recursive=True)

    def disk_usage(self) -> int:
        """Total bytes stored under the root."""
        return int(sum(self.fs.du(self.root, total=False).values())) if self.exists() else 0


@contextmanager
def io_errors(location: StoreLocation, action: str) -> Iterator[None]:
    """Turn storage failures inside the block into a :class:`StoreIOError` naming the store, the action and the fix.

    kdcache's own errors and ``FileNotFoundError`` (which callers interpret) pass through unchanged.
    """
    try:
        yield
    except (KdcacheError, FileNotFoundError):
        raise
    except _storage_errors() as exc:
        raise StoreIOError(describe_io_error(location, action, exc)) from exc


def _storage_errors() -> tuple[type[BaseException], ...]:
    """OS errors, plus the errors remote clients raise outside that hierarchy once their retries are spent (botocore
    timeouts and connection failures, aiohttp client errors)."""
    found: list[type[BaseException]] = [OSError]
    try:
        from botocore.exceptions import BotoCoreError

        found.append(BotoCoreError)
    except ImportError:
        pass
    try:
        from aiohttp import ClientError

        found.append(ClientError)
    except ImportError:
        pass
    return tuple(found)


def describe_io_error(location: StoreLocation, action: str, exc: BaseException) -> str:
    code = getattr(exc, "errno", None)
    if code in (errno.ENOSPC, errno.EDQUOT):
        why = "no space is left on the device (or quota) holding the store"
        fix = "free space, then re-run: committed shards are kept and the run resumes at the first missing shard"
    elif isinstance(exc, PermissionError) or code in (errno.EACCES, errno.EPERM):
        why = "permission was denied"
        fix = "check the credentials in the environment (for s3://: AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY or AWS_PROFILE) and the directory or bucket permissions"
    else:
        why = f"{type(exc).__name__}: {exc}"
        fix = "check the path or endpoint and the network; transient errors were already retried. Committed shards are kept"
    return f"{action} failed for store {location.url!r}: {why}. To fix: {fix}"


def _read_regular_file(path: str, limit: int | None, refuse: Callable[[str], Exception]) -> bytes:
    """Read a local file that must be regular and (with ``limit``) at most ``limit`` bytes: opened without blocking
    (a FIFO would wait for a writer) and checked on the open descriptor, so a swap after the check changes nothing."""
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
    with os.fdopen(fd, "rb") as f:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise refuse(
                f"is not a regular file (mode {stat.filemode(info.st_mode)}); a store holds only regular files"
            )
        if limit is not None and info.st_size > limit:
            raise refuse(f"is {info.st_size:,} bytes, over the {limit:,}-byte limit kdcache reads for this file")
        return f.read() if limit is None else f.read(limit + 1)


def _without_credentials(url: str) -> str:
    """``url`` itself, refused when it embeds a password (``s3://key:secret@bucket/...``): a URL is shown in messages
    and logs and sent to dask workers, so credentials must come from the environment or storage options instead."""
    parts = urlsplit(url)
    if parts.scheme and parts.password is not None:
        shown = urlunsplit(parts._replace(netloc=f"***@{parts.hostname or ''}"))
        raise ConfigError(
            f"store URL {shown!r} embeds credentials, which would end up in logs, messages and dask tasks. Remove "
            "them from the URL and set them in the environment (for s3://: AWS_ACCESS_KEY_ID and "
            "AWS_SECRET_ACCESS_KEY, or AWS_PROFILE)"
        )
    return url


def _protocols(fs: fsspec.AbstractFileSystem) -> set[str]:
    proto = fs.protocol
    return set(proto) if isinstance(proto, (tuple, list)) else {proto}
