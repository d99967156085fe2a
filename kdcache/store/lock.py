"""One writer per store: an exclusive lock object created atomically next to the manifest.

zarr rewrites a whole shard on any write, so two stage-one runs on one store could silently lose each other's
shards. The lock is created with an exclusive create (``O_EXCL`` on local disk, a conditional PUT on object stores)
and names its owner: host, boot id, pid and the process's start time. A lock whose owner died (SIGKILL, power loss)
stays until it is broken explicitly with ``--break-lock``: kdcache says when the owner is provably gone, but never
takes over a store on a guess, and never from a writer alive on this host (same boot, same pid, same start time: a
reused pid is not the owner).
"""

from __future__ import annotations

import json
import logging
import os
import socket
import time
import uuid
from typing import Any

from kdcache.errors import StoreLockedError, say
from kdcache.store.bounded import LOCK_MAX_BYTES
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
            "boot_id": boot_id(),
            "pid": os.getpid(),
            "started": process_start(os.getpid()),
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
        if owner_alive(holder):
            raise StoreLockedError(
                f"store {self.location.url!r} is being written by {_who(holder)}, which is alive on this host: "
                f"{say('break_lock', '--break-lock')} takes over only the lock of a writer that is gone, since both "
                f"would publish the manifest and one would lose the other's records. Wait for pid {holder.get('pid')} "
                f"to finish, or stop it (kill {holder.get('pid')}) and re-run with {_break_lock()}. Committed shards "
                "are kept"
            )
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
            return json.loads(self.location.read_bytes(LOCK_KEY, limit=LOCK_MAX_BYTES))
        except (FileNotFoundError, ValueError):
            return {}


def boot_id() -> str:
    """This boot's id (Linux); empty where the system has none. A pid names a process only within one boot."""
    try:
        with open("/proc/sys/kernel/random/boot_id") as f:
            return f.read().strip()
    except OSError:
        return ""


def process_start(pid: int) -> int | None:
    """When process ``pid`` started, in clock ticks since boot (``/proc/<pid>/stat`` field 22); None if unknown.
    A pid reused by another process after the owner died has another start time."""
    try:
        return int(_proc_stat(pid)[19])
    except (OSError, ValueError, IndexError):
        return None


def _proc_stat(pid: int) -> list[str]:
    """The fields of ``/proc/<pid>/stat`` after the command name (state first); ``OSError`` without procfs."""
    with open(f"/proc/{pid}/stat") as f:
        return f.read().rpartition(")")[2].split()  # the command name, in parentheses, may hold spaces


def _zombie(pid: int) -> bool:
    """A killed process its parent has not reaped yet: ``kill(pid, 0)`` still succeeds, but it writes nothing."""
    try:
        return _proc_stat(pid)[0] == "Z"
    except (OSError, IndexError):
        return False


def owner_alive(holder: dict[str, Any]) -> bool:
    """The lock's owner is provably alive: on this host, in this boot, its pid running with its start time (locks
    of older kdcache versions, which record neither: its pid running)."""
    if holder.get("host") != socket.gethostname() or not _alive(holder.get("pid")) or _zombie(holder["pid"]):
        return False
    recorded = holder.get("boot_id")
    if recorded is not None and recorded != boot_id():
        return False
    started = holder.get("started")
    return started is None or started == process_start(holder["pid"])


def describe_holder(location: StoreLocation, holder: dict[str, Any]) -> str:
    """Who holds the lock, whether it is provably dead, and what to do."""
    dead = holder.get("host") == socket.gethostname() and not owner_alive(holder)
    state = (
        "that process is no longer running on this host, so the lock is stale"
        if dead
        else "if that process is gone (killed, or on another machine that stopped), the lock is stale"
    )
    return (
        f"store {location.url!r} is being written by {_who(holder)}; a second writer could lose its shards. Wait for "
        f"it to finish; {state}: re-run with {_break_lock()} to take it over. "
        "Committed shards are kept either way"
    )


def _break_lock() -> str:
    """How a writer takes over a stale lock, in the caller's words (a Python caller is also told the flag, since the
    writer holding the lock may be a ``kdcache`` command)."""
    return say("precompute(..., break_lock=True) (--break-lock on the command line)", "--break-lock")


def _who(holder: dict[str, Any]) -> str:
    if not holder:
        return "an unknown writer (unreadable lock)"
    return f"pid {holder.get('pid')} on host {holder.get('host')} since {holder.get('since')}"


def _alive(pid: object) -> bool:
    if not isinstance(pid, int) or isinstance(pid, bool) or pid <= 0:  # 0 and -1 would signal groups, not a process
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
