"""Locks a live writer keeps: ``--break-lock`` never takes the lock of a writer alive on this host (same boot, same
pid, same process start time), a stale one (dead pid, reused pid, another boot) is broken, and a writer whose lock
was broken all the same (it looked stale from another machine) merges, never drops, the other writer's teacher."""

from __future__ import annotations

import json
import os
import signal
import socket
import time
from pathlib import Path

import numpy as np
import pytest

from kdcache.checkpoint import load_model
from kdcache.errors import StoreLockedError
from kdcache.models import DigitsCNN
from kdcache.precompute import precompute
from kdcache.store import open_store
from kdcache.store.location import StoreLocation
from kdcache.store.lock import LOCK_KEY, StoreLock, boot_id, process_start
from tests.conftest import MEAN, STD
from tests.faults.ledger import Outcome, clear_error, record
from tests.faults.stores import read_everything, targets
from tests.faults.test_concurrency import wait_for
from tests.faults.test_crash import reference, start, store_bytes, teacher_file  # noqa: F401 (fixtures)
from tests.faults.worker import BATCH, SHARD, dataset, run


def plant_lock(store: Path, **fields: object) -> None:
    """A lock as kdcache writes it, with ``fields`` changed (another boot, another start time, another host)."""
    holder = {"host": socket.gethostname(), "boot_id": boot_id(), "pid": os.getpid(),
              "started": process_start(os.getpid()), "since": "2026-01-01T00:00:00+0000", "token": "planted"}  # fmt: skip
    (store / ".kdcache").mkdir(parents=True, exist_ok=True)
    (store / LOCK_KEY).write_text(json.dumps(holder | fields))


def take(store: Path) -> dict:
    """Take the lock with --break-lock and return the lock as it stood inside the block."""
    with StoreLock(StoreLocation(store), break_lock=True) as lock:
        return lock.holder()


def test_break_lock_refuses_the_lock_of_this_live_process(tmp_path):
    plant_lock(tmp_path)
    outcome = Outcome("locks", "break-lock-of-a-live-writer-in-process")
    start_time = time.perf_counter()
    with pytest.raises(StoreLockedError) as raised:
        take(tmp_path)
    outcome.note = f"{time.perf_counter() - start_time:.3f} s"
    outcome.detected = clear_error(raised.value, f"pid {os.getpid()}", "alive on this host", f"kill {os.getpid()}")
    outcome.bytes_lost = json.loads((tmp_path / LOCK_KEY).read_text())["token"] != "planted"
    assert record(outcome).passed, (outcome, str(raised.value))


STALE = {
    "another-boot": {"boot_id": "00000000-0000-0000-0000-000000000000"},
    "reused-pid": {"started": 1},  # this pid, but a process that started at another time
    "dead-pid": {"pid": 2**22 + 1},  # above the kernel's pid_max: no such process
}


@pytest.mark.parametrize("case", sorted(STALE))
def test_a_stale_lock_is_broken(tmp_path, case):
    plant_lock(tmp_path, **STALE[case])
    outcome = Outcome("locks", f"stale-lock-{case}")
    holder = take(tmp_path)
    outcome.recovered = holder["pid"] == os.getpid() and holder["token"] != "planted"
    outcome.recovered &= holder["started"] == process_start(os.getpid()) and holder["boot_id"] == boot_id()
    outcome.recovered &= not (tmp_path / LOCK_KEY).exists()  # released at the end of the block
    assert record(outcome).passed, (outcome, holder)


@pytest.mark.slow
def test_break_lock_refuses_a_live_writer_process_which_finishes_intact(tmp_path, teacher_file, reference):  # noqa: F811
    store = tmp_path / "store.zarr"
    first = start(store, teacher_file)
    wait_for(store / LOCK_KEY)
    outcome = Outcome("locks", "break-lock-of-a-live-writer-process")
    with pytest.raises(StoreLockedError) as raised:
        run(str(store), str(teacher_file), slow=False, break_lock=True)
    outcome.detected = clear_error(raised.value, str(store), f"pid {first.pid}", "alive on this host", "--break-lock")
    assert first.wait(timeout=120) == 0, first.stderr.read()
    outcome.recovered = store_bytes(store) == reference  # the first writer was not disturbed
    outcome.bytes_lost = not outcome.recovered
    assert record(outcome).passed, (outcome, str(raised.value))


def second_teacher(store: Path, weights: Path) -> None:
    """Stage one of teacher ``t9`` (the same weights as ``t8``) into ``store``, breaking the lock."""
    from kdcache.views import ViewTransform

    teacher = load_model(DigitsCNN(10, width=8), weights).eval()
    views = ViewTransform(count=1, seed=0, mean=MEAN, std=STD)
    precompute(teacher, dataset(), store, targets=targets(), views=views, num_classes=10, teacher_name="t9",
               shard_samples=SHARD, batch_size=BATCH, progress=False, break_lock=True)  # fmt: skip


@pytest.mark.slow
def test_two_writers_with_break_lock_in_between_lose_nothing(tmp_path, teacher_file):  # noqa: F811
    """Writer A (teacher t8) hangs on what looks like another machine; B breaks its lock and caches t9; A wakes up
    and publishes its manifest: t9 stays, and both teachers read back complete and intact."""
    expected = read_everything(run_reference(tmp_path / "reference.zarr", teacher_file))
    store = tmp_path / "store.zarr"
    first = start(store, teacher_file)
    wait_for(store / ".kdcache/commits/teachers/t8/000002.json")
    first.send_signal(signal.SIGSTOP)
    lock = json.loads((store / LOCK_KEY).read_text())
    (store / LOCK_KEY).write_text(json.dumps(lock | {"host": "another-machine"}))  # a writer we cannot see
    outcome = Outcome("locks", "two-writers-two-teachers-break-lock-in-between")
    second_teacher(store, teacher_file)
    t9 = {k: v for k, v in store_bytes(store).items() if k.startswith("teachers/t9/")}
    first.send_signal(signal.SIGCONT)
    code = first.wait(timeout=120)
    if code != 0:  # B removed a temp file A was writing: A stops with an error and a re-run resumes it
        outcome.note = f"writer A exited {code}, resumed"
        run(str(store), str(teacher_file), slow=False, break_lock=False)
    cache = open_store(str(store))
    outcome.bytes_lost = sorted(cache.teachers) != ["t8", "t9"] or any(
        store_bytes(store).get(key) != data for key, data in t9.items()
    )
    found = read_everything(store)
    outcome.recovered = all(cache.teacher(t).status == "complete" for t in ("t8", "t9")) and all(
        np.array_equal(found[path.replace("t8", t)], values, equal_nan=True)
        for path, values in expected.items()
        for t in ("t8", "t9")
    )
    assert record(outcome).passed, outcome


def run_reference(path: Path, weights: Path) -> Path:
    run(str(path), str(weights), slow=False, break_lock=False)
    return path


def test_the_lock_of_a_killed_writer_not_yet_reaped_is_stale(tmp_path):
    """A SIGKILLed owner its parent has not waited for is a zombie: ``kill(pid, 0)`` succeeds, yet it writes nothing."""
    import subprocess
    import sys

    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        plant_lock(tmp_path, pid=child.pid, started=process_start(child.pid))
        child.kill()
        deadline = time.monotonic() + 10
        while Path(f"/proc/{child.pid}/stat").read_text().rpartition(")")[2].split()[0] != "Z":
            assert time.monotonic() < deadline, "the child never became a zombie"
            time.sleep(0.01)
        outcome = Outcome("locks", "stale-lock-of-an-unreaped-killed-writer")
        holder = take(tmp_path)
        outcome.recovered = holder["pid"] == os.getpid() and holder["token"] != "planted"
    finally:
        child.wait()
    assert record(outcome).passed, (outcome, holder)
