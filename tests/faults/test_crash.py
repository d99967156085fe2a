"""Stage one killed at random points (SIGKILL), interrupted (SIGINT), and killed again while resuming: the resumed
store is byte-identical to an uninterrupted one and nothing committed before the crash is lost."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from kdcache.checkpoint import save_model
from kdcache.store.location import StoreLocation
from kdcache.store.lock import LOCK_KEY
from kdcache.store.manifest import read_commits
from tests.conftest import ROOT
from tests.faults.ledger import Outcome, record
from tests.faults.worker import run


@pytest.fixture(scope="module")
def teacher_file(tmp_path_factory, _trained_teacher) -> Path:
    return save_model(_trained_teacher, tmp_path_factory.mktemp("teacher") / "t8.safetensors", spec={})


@pytest.fixture(scope="module")
def reference(tmp_path_factory, teacher_file) -> dict[str, bytes]:
    store = tmp_path_factory.mktemp("reference") / "store.zarr"
    run(str(store), str(teacher_file), slow=False, break_lock=False)
    return store_bytes(store)


def store_bytes(store: Path) -> dict[str, bytes]:
    """Every file of a store (data, metadata, manifest, commit records), the lock excepted."""
    return {
        str(p.relative_to(store)): p.read_bytes() for p in sorted(store.rglob("*")) if p.is_file() and p.name != "lock"
    }


def committed(store: Path) -> dict[str, bytes]:
    """The shard files that valid commit records vouch for, right now."""
    location = StoreLocation(store)
    if not location.exists():
        return {}
    out = {}
    for owner in ("samples", "teachers/t8"):
        for commit in read_commits(location, owner).values():
            for digest in commit.files.values():
                path = store / digest.key
                if path.is_file() and path.stat().st_size == digest.nbytes:
                    out[digest.key] = path.read_bytes()
    return out


def start(store: Path, teacher_file: Path, *extra: str) -> subprocess.Popen:
    child = subprocess.Popen(
        [sys.executable, "-m", "tests.faults.worker", str(store), str(teacher_file), *extra],
        cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )  # fmt: skip
    assert child.stdout.readline().strip() == "ready", child.stderr.read()
    return child


def kill_after(child: subprocess.Popen, delay: float, sig: int = signal.SIGKILL) -> int:
    time.sleep(delay)
    child.send_signal(sig)
    return child.wait(timeout=120)


def finish_and_compare(
    store: Path, teacher_file: Path, before: dict[str, bytes], reference: dict[str, bytes], outcome: Outcome
) -> None:
    run(str(store), str(teacher_file), slow=False, break_lock=True)
    final = store_bytes(store)
    outcome.recovered = final == reference and not list(store.rglob("*.partial")) and not (store / LOCK_KEY).exists()
    outcome.bytes_lost = any(final.get(key) != data for key, data in before.items())
    outcome.silent_wrong = not outcome.recovered and final.keys() == reference.keys()


@pytest.mark.slow
@pytest.mark.parametrize("seed", range(8))
def test_sigkill_at_a_random_point_then_resume(tmp_path, teacher_file, reference, seed):
    store = tmp_path / "store.zarr"
    delay = random.Random(f"kill-{seed}").uniform(0.0, 1.4)
    kill_after(start(store, teacher_file), delay)
    before = committed(store)
    outcome = Outcome("crash", f"sigkill-after-{delay:.2f}s", note=f"{len(before)} shard files committed at the kill")
    finish_and_compare(store, teacher_file, before, reference, outcome)
    assert record(outcome).passed, outcome


@pytest.mark.slow
@pytest.mark.parametrize("seed", range(3))
def test_a_crash_during_resume_is_itself_resumable(tmp_path, teacher_file, reference, seed):
    store = tmp_path / "store.zarr"
    rng = random.Random(f"double-{seed}")
    kill_after(start(store, teacher_file), rng.uniform(0.2, 0.8))
    first = committed(store)
    kill_after(start(store, teacher_file, "--break-lock"), rng.uniform(0.1, 0.6))
    second = committed(store)
    outcome = Outcome("crash", f"kill-during-resume-{seed}", note=f"{len(first)} then {len(second)} files committed")
    finish_and_compare(store, teacher_file, {**first, **second}, reference, outcome)
    assert record(outcome).passed, outcome


@pytest.mark.slow
@pytest.mark.parametrize("seed", range(3))
def test_sigint_stops_cleanly_after_committing_finished_shards(tmp_path, teacher_file, reference, seed):
    store = tmp_path / "store.zarr"
    code = kill_after(start(store, teacher_file), random.Random(f"int-{seed}").uniform(0.3, 0.9), signal.SIGINT)
    before = committed(store)
    outcome = Outcome("interrupt", f"sigint-{seed}", note=f"exit {code}, {len(before)} files committed")
    clean_stop = code in (0, 130) and not (store / LOCK_KEY).exists()  # 0: it had finished already
    run(str(store), str(teacher_file), slow=False, break_lock=False)  # no lock to break after a clean stop
    final = store_bytes(store)
    outcome.recovered = clean_stop and final == reference
    outcome.bytes_lost = any(final.get(key) != data for key, data in before.items())
    assert record(outcome).passed, outcome
