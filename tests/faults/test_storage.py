"""Storage faults: a disk that fills up during stage one (a real tmpfs of limited size), and an S3 endpoint that
throttles, refuses or hangs (a real HTTP proxy in front of the moto server)."""

from __future__ import annotations

import math
import subprocess
import time
from pathlib import Path

import pytest
import s3fs

from kdcache.errors import StoreIOError
from kdcache.store import open_store
from kdcache.store.location import StoreLocation
from tests.conftest import KEY_ID, SECRET
from tests.faults.ledger import Outcome, clear_error, record
from tests.faults.s3proxy import FaultyS3Proxy
from tests.faults.stores import build_store
from tests.faults.test_crash import committed, store_bytes


def mount_tmpfs(path: Path, size: int) -> None:
    path.mkdir(parents=True, exist_ok=True)
    result = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)], capture_output=True)
    assert result.returncode == 0, f"this suite needs root to mount a small tmpfs: {result.stderr.decode()}"


def pages(store: Path) -> int:
    return sum(math.ceil(p.stat().st_size / 4096) for p in store.rglob("*") if p.is_file())


@pytest.fixture
def reference(tmp_path, teacher, digits_small, views) -> Path:
    return build_store(tmp_path / "reference.zarr", teacher, digits_small, views)


@pytest.mark.slow
@pytest.mark.parametrize("fraction", [0.3, 0.6, 0.85], ids=["early", "midway", "late"])
def test_disk_full_is_reported_keeps_committed_bytes_and_resumes(
    tmp_path, reference, teacher, digits_small, views, fraction
):
    mount = tmp_path / "small-disk"
    mount_tmpfs(mount, int(pages(reference) * fraction) * 4096)
    store = mount / "store.zarr"
    outcome = Outcome("storage", f"disk-full-at-{fraction:.0%}")
    try:
        try:
            build_store(store, teacher, digits_small, views)
        except StoreIOError as exc:
            outcome.detected = clear_error(exc, str(store), "no space is left", "free space, then re-run")
        before = committed(store)
        expected = store_bytes(reference)
        outcome.bytes_lost = any(expected.get(key) != data for key, data in before.items())
        subprocess.run(["mount", "-o", "remount,size=16m", str(mount)], check=True)
        build_store(store, teacher, digits_small, views)
        final = store_bytes(store)
        outcome.recovered = final == expected
        outcome.bytes_lost |= any(final.get(key) != data for key, data in before.items())
    finally:
        subprocess.run(["umount", str(mount)], check=False)
    assert record(outcome).passed, (outcome, len(before))


def s3_objects(prefix: str) -> dict[str, bytes]:
    fs = s3fs.S3FileSystem()
    root = f"bucket/{prefix}/"
    return {path.removeprefix(root): fs.cat_file(path) for path in fs.find(root) if not path.endswith("/lock")}


def through(proxy: FaultyS3Proxy, monkeypatch: pytest.MonkeyPatch) -> None:
    """Send every S3 request of this process through ``proxy``."""
    monkeypatch.setenv("AWS_ENDPOINT_URL", proxy.url)
    s3fs.S3FileSystem.clear_instance_cache()


FAST_FAIL = {"config_kwargs": {"connect_timeout": 1, "read_timeout": 1, "retries": {"max_attempts": 1}}}


@pytest.mark.distributed
def test_transient_s3_errors_are_retried(s3_env, monkeypatch, reference, teacher, digits_small, views):
    with FaultyS3Proxy(s3_env["AWS_ENDPOINT_URL"], "flaky", every=4) as proxy:
        through(proxy, monkeypatch)
        build_store(StoreLocation("s3://bucket/flaky/store.zarr"), teacher, digits_small, views)
    monkeypatch.setenv("AWS_ENDPOINT_URL", s3_env["AWS_ENDPOINT_URL"])
    s3fs.S3FileSystem.clear_instance_cache()
    outcome = Outcome("storage", "s3-503-every-4th-request", note=f"{proxy.injected} of {proxy.requests} refused")
    outcome.recovered = proxy.injected > 10 and s3_objects("flaky/store.zarr") == store_bytes(reference)
    assert record(outcome).passed, outcome


@pytest.mark.distributed
def test_permanent_s3_errors_are_reported_clearly_without_credentials(
    s3_env, monkeypatch, teacher, digits_small, views
):
    url = "s3://bucket/denied/store.zarr"
    with FaultyS3Proxy(s3_env["AWS_ENDPOINT_URL"], "denied") as proxy:
        through(proxy, monkeypatch)
        start = time.perf_counter()
        with pytest.raises(StoreIOError) as raised:
            build_store(StoreLocation(url), teacher, digits_small, views)
        seconds = time.perf_counter() - start
    outcome = Outcome("storage", "s3-403-access-denied", note=f"reported after {seconds:.1f} s")
    text = str(raised.value)
    outcome.detected = clear_error(raised.value, url, "permission was denied", "AWS_ACCESS_KEY_ID") and seconds < 60
    outcome.silent_wrong = KEY_ID in text or SECRET in text  # a leaked credential is a wrong result too
    assert record(outcome).passed, (outcome, text)


@pytest.mark.distributed
@pytest.mark.parametrize("operation", ["write", "read"])
def test_a_hung_s3_endpoint_fails_within_a_deadline(s3_env, monkeypatch, teacher, digits_small, views, operation):
    url = f"s3://bucket/stall-{operation}/store.zarr"
    if operation == "read":
        build_store(StoreLocation(url), teacher, digits_small, views)  # a good store, then the endpoint hangs
    with FaultyS3Proxy(s3_env["AWS_ENDPOINT_URL"], "stall", stall=120) as proxy:
        through(proxy, monkeypatch)
        start = time.perf_counter()
        with pytest.raises(StoreIOError) as raised:
            if operation == "write":
                build_store(StoreLocation(url, FAST_FAIL), teacher, digits_small, views)
            else:
                open_store(url, storage_options=FAST_FAIL)
        seconds = time.perf_counter() - start
    outcome = Outcome("storage", f"s3-hung-endpoint-{operation}", note=f"gave up after {seconds:.1f} s")
    outcome.detected = clear_error(raised.value, url, "transient errors were already retried") and seconds < 60
    assert record(outcome).passed, (outcome, str(raised.value))


@pytest.mark.parametrize("writer", ["training-state", "model"])
def test_a_full_disk_while_saving_a_checkpoint_keeps_the_previous_one(tmp_path, writer):
    """A training checkpoint (or a model file) that does not fit is a StoreIOError naming the file; the previous
    checkpoint is intact and loads, and no temp file is left behind."""
    import torch

    from kdcache.checkpoint import load_state_dict, save_model
    from kdcache.train.statefile import load_state, save_state

    def save(path: Path, values: int) -> None:
        if writer == "model":
            save_model(torch.nn.Linear(values, 1, bias=False), path, spec={})
        else:
            save_state(path, {"student": {"weight": torch.arange(values, dtype=torch.float32)}, "epoch": values})

    def load(path: Path) -> torch.Tensor:  # a copy: a tensor mapped from the file would keep the disk busy
        state = load_state_dict(path) if writer == "model" else load_state(path)["student"]
        return state["weight"].flatten().clone()

    mount = tmp_path / "small-disk"
    mount_tmpfs(mount, 256 * 1024)
    path = mount / "run" / "checkpoint.safetensors"
    outcome = Outcome("storage", f"disk-full-saving-a-{writer}-checkpoint")
    try:
        save(path, 1000)  # 4 KB: fits
        before, values = path.read_bytes(), load(path)
        with pytest.raises(StoreIOError) as raised:
            save(path, 1_000_000)  # 4 MB: does not
        outcome.detected = clear_error(raised.value, str(path), "no space is left", "previous file there is intact")
        outcome.bytes_lost = path.read_bytes() != before or not torch.equal(load(path), values)
        outcome.bytes_lost |= [p.name for p in path.parent.iterdir()] != [path.name]  # no temp file left
    finally:
        subprocess.run(["umount", str(mount)], check=False)
    assert record(outcome).passed, (outcome, str(raised.value))
