"""Concurrency: a second writer is refused while the first runs, a dead writer's lock is broken only explicitly,
and readers never see shards that are not committed."""

from __future__ import annotations

import signal
import time

import numpy as np
import pytest

from kdcache.errors import CorruptShardError, StoreIncompleteError, StoreLockedError
from kdcache.store import open_store
from kdcache.store.lock import LOCK_KEY
from tests.faults.ledger import Outcome, clear_error, record
from tests.faults.test_crash import kill_after, reference, start, store_bytes, teacher_file  # noqa: F401 (fixtures)
from tests.faults.worker import run


def wait_for(path, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while not path.exists():
        assert time.monotonic() < deadline, f"{path} never appeared"
        time.sleep(0.02)


@pytest.mark.slow
def test_a_second_writer_is_refused_while_the_first_runs(tmp_path, teacher_file, reference):  # noqa: F811
    store = tmp_path / "store.zarr"
    first = start(store, teacher_file)
    wait_for(store / LOCK_KEY)
    outcome = Outcome("concurrency", "second-writer-while-first-runs")
    with pytest.raises(StoreLockedError) as raised:
        run(str(store), str(teacher_file), slow=False, break_lock=False)
    outcome.detected = clear_error(raised.value, str(store), f"pid {first.pid}", "--break-lock")
    assert first.wait(timeout=120) == 0
    outcome.recovered = store_bytes(store) == reference  # the first writer was not disturbed
    assert record(outcome).passed, (outcome, str(raised.value))


@pytest.mark.slow
def test_a_dead_writers_lock_is_reported_and_broken_only_explicitly(tmp_path, teacher_file, reference):  # noqa: F811
    store = tmp_path / "store.zarr"
    child = start(store, teacher_file)
    wait_for(store / LOCK_KEY)
    kill_after(child, 0.2, signal.SIGKILL)
    outcome = Outcome("concurrency", "stale-lock-of-a-killed-writer")
    with pytest.raises(StoreLockedError) as raised:
        run(str(store), str(teacher_file), slow=False, break_lock=False)
    outcome.detected = clear_error(raised.value, "no longer running on this host", "--break-lock")
    run(str(store), str(teacher_file), slow=False, break_lock=True)
    outcome.recovered = store_bytes(store) == reference and not (store / LOCK_KEY).exists()
    assert record(outcome).passed, (outcome, str(raised.value))


@pytest.mark.slow
def test_readers_never_see_uncommitted_shards(tmp_path, teacher_file):  # noqa: F811
    store = tmp_path / "store.zarr"
    child = start(store, teacher_file)
    wait_for(store / ".kdcache/commits/teachers/t8/000002.json")  # some shards committed, most not yet
    kill_after(child, 0.0, signal.SIGKILL)
    cache = open_store(str(store))
    record_ = cache.teacher("t8")
    outcome = Outcome("concurrency", "read-a-store-still-being-built", note=f"{len(record_.shards)} shards committed")
    with pytest.raises(StoreIncompleteError) as incomplete:
        cache.require_complete("t8")
    reader = cache.array_reader(record_.targets["logits"].arrays["logits"], "teachers/t8", in_memory=False)
    last = cache.num_samples - 1  # the final shard is never committed this early
    with pytest.raises(CorruptShardError) as uncommitted:
        reader.read_rows(np.array([last]))
    outcome.detected = clear_error(incomplete.value, "resumes") and clear_error(uncommitted.value, "not committed")
    assert record(outcome).passed, outcome
