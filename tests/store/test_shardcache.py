"""A local shard cache in front of a store on S3 (a real moto server on 127.0.0.1, every request counted by a
pass-through proxy): the second epoch reads no shard object, rows equal the local store's byte for byte, and a
killed fetch, a corrupt cached file, a cache too small for one shard and two DataLoader workers sharing one
directory never change a row."""

from __future__ import annotations

import hashlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import s3fs

from kdcache.models import DigitsCNN
from kdcache.pipeline import parse_pipeline
from kdcache.pipeline.build import load_split
from kdcache.pipeline.cached import cached_data
from kdcache.pipeline.distill import run_precompute, stored_teacher
from kdcache.precompute import precompute
from kdcache.store import StoreReader, open_store
from kdcache.targets import build_target
from kdcache.train import CachedDataset, batch_loader, set_loader_epoch
from kdcache.views import ViewTransform
from tests.conftest import MEAN, ROOT, STD, pipeline_dict
from tests.faults.s3proxy import FaultyS3Proxy
from tests.faults.test_storage import mount_tmpfs

URL = "s3://bucket/shardcache/train.zarr"
SHARDS = 5  # 300 samples in shards of 64


@pytest.fixture(scope="module")
def views() -> ViewTransform:
    return ViewTransform(count=1, seed=0, mean=MEAN, std=STD)


@pytest.fixture(scope="module")
def stores(s3_env, digits_small, views, tmp_path_factory) -> tuple[str, Path]:
    """The store on S3, and a byte-for-byte local copy of it."""
    precompute(
        DigitsCNN(10, width=4).eval(),
        digits_small,
        URL,
        targets=[build_target("logits", {})],
        views=views,
        num_classes=10,
        teacher_name="t4",
        shard_samples=64,
        progress=False,
    )
    local = tmp_path_factory.mktemp("local") / "train.zarr"
    s3fs.S3FileSystem().get(URL.removeprefix("s3://"), str(local), recursive=True)
    return URL, local


@pytest.fixture
def proxy(s3_env, monkeypatch):
    """Every S3 request of this process (and its forked workers) through a counting proxy."""
    with FaultyS3Proxy(s3_env["AWS_ENDPOINT_URL"], "pass") as counting:
        monkeypatch.setenv("AWS_ENDPOINT_URL", counting.url)
        s3fs.S3FileSystem.clear_instance_cache()
        yield counting
    s3fs.S3FileSystem.clear_instance_cache()


def dataset(digits_small, views, cache: StoreReader) -> CachedDataset:
    return CachedDataset(digits_small, cache, teacher="t4", targets=["logits"], views=views, ram_budget_bytes=0)


def epoch(digits_small, views, cache: StoreReader, seed: int) -> np.ndarray:
    """Every row's stored logits, read in a shuffled order of batches of 50 and put back in sample order."""
    data = dataset(digits_small, views, cache)
    order = np.random.default_rng(seed).permutation(300)
    out = np.empty((300, 10), dtype=np.float16)
    for batch in np.array_split(order, 6):
        out[batch] = data[batch].stored["logits"]["logits"].numpy()
    if cache.shard_cache is not None:
        cache.shard_cache.wait()
    return out


def shard_gets(proxy: FaultyS3Proxy, since: int = 0) -> int:
    return sum(method == "GET" and "/c/" in path for method, path in proxy.log[since:])


def cached_files(directory: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in directory.iterdir() if p.name.endswith(".shard")}


def test_second_epoch_reads_no_shard_object_from_s3(stores, proxy, digits_small, views, tmp_path):
    url, local = stores
    expected = epoch(digits_small, views, open_store(str(local)), seed=0)
    first = epoch(digits_small, views, open_store(url, shard_cache=tmp_path / "sc"), seed=1)
    fetched = shard_gets(proxy)
    mark = len(proxy.log)
    second = epoch(digits_small, views, open_store(url, shard_cache=tmp_path / "sc"), seed=2)  # a new process's view
    assert fetched >= SHARDS and shard_gets(proxy, mark) == 0
    assert first.tobytes() == second.tobytes() == expected.tobytes()
    mark = len(proxy.log)
    epoch(digits_small, views, open_store(url), seed=2)  # without the cache every epoch fetches every shard again
    assert shard_gets(proxy, mark) >= SHARDS
    for name, raw in cached_files(tmp_path / "sc").items():  # named by content, and holding it
        assert hashlib.sha256(raw).hexdigest() + ".shard" == name


def test_store_larger_than_the_cache_evicts_and_reads_exact_rows(stores, proxy, digits_small, views, tmp_path):
    url, local = stores
    expected = epoch(digits_small, views, open_store(str(local)), seed=0)
    sizes = sorted(p.stat().st_size for p in local.rglob("*") if p.is_file() and "c" in p.relative_to(local).parts)
    limit = sum(sizes[-3:])  # room for three of the store's shard files, far fewer than it has
    for seed in (1, 2):
        rows = epoch(digits_small, views, open_store(url, shard_cache=tmp_path / "sc", shard_cache_bytes=limit), seed)
        assert rows.tobytes() == expected.tobytes()
        kept = cached_files(tmp_path / "sc")
        assert 0 < len(kept) < len(sizes) and sum(map(len, kept.values())) <= limit


def test_corrupt_cached_shard_is_detected_refetched_and_never_used(stores, proxy, digits_small, views, tmp_path):
    url, local = stores
    expected = epoch(digits_small, views, open_store(str(local)), seed=0)
    epoch(digits_small, views, open_store(url, shard_cache=tmp_path / "sc"), seed=1)
    name, raw = next(iter(cached_files(tmp_path / "sc").items()))
    flipped = bytearray(raw)
    flipped[len(raw) // 2] ^= 0x01
    (tmp_path / "sc" / name).write_bytes(bytes(flipped))
    mark = len(proxy.log)
    with pytest.warns(UserWarning, match=rf"{name[:12]}.*is not the shard .* fetched again"):
        rows = epoch(digits_small, views, open_store(url, shard_cache=tmp_path / "sc"), seed=2)
    assert rows.tobytes() == expected.tobytes()
    assert shard_gets(proxy, mark) == 1 and (tmp_path / "sc" / name).read_bytes() == raw  # refetched, kept whole


def test_killed_fetch_leaves_nothing_taken_for_whole(stores, proxy, digits_small, views, tmp_path):
    """A fetch killed before its rename leaves a ``.partial`` file (never read, removed once stale); a truncated
    file under a shard's own name (what a non-atomic writer would leave) is detected and fetched again."""
    url, local = stores
    expected = epoch(digits_small, views, open_store(str(local)), seed=0)
    epoch(digits_small, views, open_store(url, shard_cache=tmp_path / "sc"), seed=1)
    files = cached_files(tmp_path / "sc")
    (name, raw), (other, _) = list(files.items())[:2]
    (tmp_path / "sc" / name).write_bytes(raw[: len(raw) // 2])
    partial = tmp_path / "sc" / f"{other}.0123.partial"
    partial.write_bytes(b"\0" * 10)
    os.utime(partial, (1, 1))  # older than any fetch still running
    (tmp_path / "sc" / other).unlink()
    with pytest.warns(UserWarning, match="is not the shard"):
        rows = epoch(digits_small, views, open_store(url, shard_cache=tmp_path / "sc"), seed=2)
    assert rows.tobytes() == expected.tobytes()
    assert cached_files(tmp_path / "sc") == files and not partial.exists()


FETCH_FOREVER = """
import sys
from kdcache.store import open_store
url, directory, limit = sys.argv[1], sys.argv[2], int(sys.argv[3])
while True:  # fresh readers every pass over a cache too small for the store: shards fetched and written constantly
    cache = open_store(url, shard_cache=directory, shard_cache_bytes=limit)
    for record in cache.owner_arrays()["teachers/t4"].values():
        cache.array_reader(record, "teachers/t4", in_memory=True).read_all()
    print("pass", flush=True)
"""


def test_process_killed_mid_fetch_leaves_only_whole_shards(stores, digits_small, views, tmp_path):
    url, local = stores
    sizes = sorted(p.stat().st_size for p in (local / "teachers").rglob("*") if p.is_file() and "c" in p.parts)
    directory = tmp_path / "sc"
    child = subprocess.Popen(
        [sys.executable, "-c", FETCH_FOREVER, url, str(directory), str(sizes[-1] * 2)],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        for _ in range(3):  # several passes done: the kill lands in the middle of fetches and writes
            assert child.stdout.readline() == "pass\n"
        time.sleep(0.05)
    finally:
        child.send_signal(signal.SIGKILL)
        child.wait()
        child.stdout.close()
    files = cached_files(directory)
    assert files and all(hashlib.sha256(raw).hexdigest() + ".shard" == n for n, raw in files.items())
    expected = epoch(digits_small, views, open_store(str(local)), seed=0)
    assert epoch(digits_small, views, open_store(url, shard_cache=directory), seed=1).tobytes() == expected.tobytes()


def test_cache_smaller_than_a_shard_streams_with_one_warning(stores, proxy, digits_small, views, tmp_path):
    url, local = stores
    expected = epoch(digits_small, views, open_store(str(local)), seed=0)
    with pytest.warns(UserWarning, match="larger than shard_cache_bytes .* streamed from the store") as caught:
        rows = epoch(digits_small, views, open_store(url, shard_cache=tmp_path / "sc", shard_cache_bytes=64), seed=1)
    assert rows.tobytes() == expected.tobytes()
    assert cached_files(tmp_path / "sc") == {} and len(caught) == 1


def test_two_dataloader_workers_share_one_cache(stores, proxy, digits_small, views, tmp_path):
    url, local = stores
    expected = epoch(digits_small, views, open_store(str(local)), seed=0)
    data = dataset(digits_small, views, open_store(url, shard_cache=tmp_path / "sc"))
    loader = batch_loader(data, batch_size=32, seed=0, num_workers=2)
    marks = []
    for n in range(2):
        marks.append(len(proxy.log))
        set_loader_epoch(loader, n)
        rows = np.empty_like(expected)
        for batch in loader:
            rows[batch.indices.numpy()] = batch.stored["logits"]["logits"].numpy()
        assert rows.tobytes() == expected.tobytes()
    assert shard_gets(proxy, marks[1]) == 0  # the second epoch's workers (new processes) read the directory only
    files = cached_files(tmp_path / "sc")
    assert len(files) >= SHARDS and all(hashlib.sha256(raw).hexdigest() + ".shard" == n for n, raw in files.items())
    assert not [p for p in (tmp_path / "sc").iterdir() if p.name.endswith(".partial")]


def test_cached_file_changed_after_verification_is_refetched(stores, proxy, monkeypatch, tmp_path):
    """An inner chunk read again (the chunk cache evicted it) comes from the cached file only while its bytes are
    the verified ones; an edited file is deleted and the shard fetched and verified again."""
    url, local = stores
    monkeypatch.setattr("kdcache.store.arrays.DEFAULT_CHUNK_CACHE_BYTES", 1)  # one decoded chunk at a time
    expected = open_store(str(local)).sample_index()
    cache = open_store(url, shard_cache=tmp_path / "sc")
    reader = cache.array_reader(cache.manifest.samples.arrays["samples/index"], "samples", in_memory=False)
    rows = np.array([0, 299, 1])  # shard 0, then shard 4 (evicting shard 0's chunk), then shard 0 read again
    assert reader.read_rows(rows[:2]).tolist() == expected[rows[:2]].tolist()
    cache.shard_cache.wait()
    path = cache.shard_cache.file_of(reader.files[0])
    raw = path.read_bytes()
    edited = bytearray(raw)
    edited[reader._spans[0][0].offset + 8] ^= 0xFF  # inside the bytes of row 1 (int64) of shard 0's first chunk
    path.write_bytes(bytes(edited))
    mark = len(proxy.log)
    with pytest.warns(UserWarning, match="changed since it was verified"):
        assert reader.read_rows(rows[2:]).tolist() == expected[rows[2:]].tolist()
    assert shard_gets(proxy, mark) == 1 and path.read_bytes() == raw


def test_pipeline_key_puts_the_shard_cache_in_stage_two(tmp_path):
    """``cache.shard_cache`` / ``cache.shard_cache_mb`` reach the store stage two opens (here a local one)."""
    raw = pipeline_dict(tmp_path)
    run_precompute(parse_pipeline(raw), progress=False)
    raw["cache"] = {
        **raw.get("cache", {}),
        "shard_cache": str(tmp_path / "sc"),
        "shard_cache_mb": 1,
        "ram_budget_mb": 0,
    }
    cfg = parse_pipeline(raw)
    data = cached_data(cfg, load_split(cfg, cfg.data.train_split), ["logits"], stored_teacher(cfg))
    reader = next(iter(data.readers["logits"].values()))
    assert reader.shard_cache is not None and reader.shard_cache.max_bytes == 1024**2
    assert len(data[np.arange(240)].stored["logits"]["logits"]) == 240
    assert cached_files(tmp_path / "sc")  # the streamed shards were kept


def test_full_disk_streams_with_one_warning(stores, proxy, digits_small, views, tmp_path):
    """A cache directory on a disk that fills up (a 2-page tmpfs) keeps what fits and streams the rest."""
    url, local = stores
    expected = epoch(digits_small, views, open_store(str(local)), seed=0)
    mount = tmp_path / "small-disk"
    mount_tmpfs(mount, 2 * 4096)
    try:
        with pytest.warns(UserWarning, match="the disk is full.*streamed from the store") as caught:
            rows = epoch(digits_small, views, open_store(url, shard_cache=mount), seed=1)
        assert rows.tobytes() == expected.tobytes() and len(caught) == 1
        files = cached_files(mount)
        assert all(hashlib.sha256(raw).hexdigest() + ".shard" == n for n, raw in files.items())
        assert not [p for p in mount.iterdir() if p.name.endswith(".partial")]
    finally:
        subprocess.run(["umount", str(mount)], check=False)
