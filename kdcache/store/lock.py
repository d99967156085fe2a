"""One writer per store: an exclusive lock object created atomically next to the manifest.

zarr rewrites a whole shard on any write, so two stage-one runs on one store could silently lose each other's
shards. The lock is created with an exclusive create (``O_EXCL`` on local disk, a conditional PUT on object stores)
and names its owner. A lock whose owner died (SIGKILL, power loss) stays until it is broken explicitly with
``--break-lock``: kdcache says when the owner is provably gone, but never takes over a store on a guess.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import time
import uuid
from typing import Any

from kdcache.errors import StoreLockedError
from kdcache.store.location import StoreLocation

LOCK_KEY = ".kdcache/lock"
log = logging.getLogger(__name__)


class StoreLock:
    """Hold the store's writer lock for the duration of a ``with`` block.

    >>> with StoreLock(StoreLocation("runs/x/train.zarr")):  # doctest: +SKIP
    ...     ...  # write shards, publish the manifest
    """

    def __init__(self, location: StoreLocation, *, break_lock: bool = False) -> None:
        self.location = location
        self.break_lock = break_lock
        self.owner = {
            "host": socket.gethostname(),
            "pid": os.getpid(),
            "since": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "token": uuid.uuid4().hex,
        }

    def __enter__(self) -> StoreLock:
        body = json.dumps(self.owner).encode()
        if self.location.create_exclusive(LOCK_KEY, body):
            return self
        holder = self.holder()
        if not self.break_lock:
            raise StoreLockedError(describe_holder(self.location, holder))
        log.warning("breaking the lock of %s held by %s", self.location.url, _who(holder))
        self.location.delete(LOCK_KEY)
        if not self.location.create_exclusive(LOCK_KEY, body):
            raise StoreLockedError(f"{describe_holder(self.location, self.holder())} (it was taken again just now)")
        return self

    def __exit__(self, *exc: object) -> None:
        if self.holder().get("token") == self.owner["token"]:  # never remove a lock someone broke and retook
            self.location.delete(LOCK_KEY)

    def holder(self) -> dict[str, Any]:
        """The current lock's owner record (empty if there is no lock or it is unreadable)."""
        try:
            return json.loads(self.location.read_bytes(LOCK_KEY))
        except (FileNotFoundError, ValueError):
            return {}


def describe_holder(location: StoreLocation, holder: dict[str, Any]) -> str:
    """Who holds the lock, whether it is provably dead, and what to do."""
    dead = holder.get("host") == socket.gethostname() and not _alive(holder.get("pid"))
    state = (
        "that process is no longer running on this host, so the lock is stale"
        if dead
        else "if that process is gone (killed, or on another machine that stopped), the lock is stale"
    )
    return (
        f"store {location.url!r} is being written by {_who(holder)}; a second writer could lose its shards. Wait for "
        f"it to finish; {state}: re-run with --break-lock (precompute(..., break_lock=True)) to take it over. "
        "Committed shards are kept either way"
    )


def _who(holder: dict[str, Any]) -> str:
    if not holder:
        return "an unknown writer (unreadable lock)"
    return f"pid {holder.get('pid')} on host {holder.get('host')} since {holder.get('since')}"


def _alive(pid: object) -> bool:
    if not isinstance(pid, int):
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
