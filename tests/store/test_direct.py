"""The direct path (kdcache/store/direct.py) reads exactly what zarr-python and tensorstore read, on every array of
every store kind, row by row and chunk by chunk; compressed arrays go through zarr-python; and bytes changed after
verification are refused on either path."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import tensorstore
import torch
import zarr
from torch.utils.data import DataLoader

from kdcache.errors import CorruptShardError
from kdcache.precompute import precompute
from kdcache.store import open_store
from kdcache.store.direct import DirectLayout
from kdcache.targets import build_target
from kdcache.train import CachedDataset
from kdcache.views import TokenViews, ViewTransform
from tests.conftest import MEAN, STD, cache_digits

IMAGE_STORES = {
    "fp16": [
        build_target("logits", {"dtype": "float16"}),
        build_target("logits", {"encoding": "int8"}),
        build_target("logits", {"encoding": "topk", "k": 3, "temperatures": [1.0, 4.0]}),
        build_target("features", {"layer": "layer2"}),
        build_target("fsp", {"layers": ["layer1", "layer2"]}),
    ],
    "bf16": [
        build_target("logits", {"dtype": "bfloat16"}),
        build_target("features", {"layer": "layer2", "dtype": "float32", "compressor": "none"}),
        build_target("fsp", {"layers": ["layer1", "layer2"], "compressor": "lz4"}),
    ],
}
TOKEN_STORES = {
    "tokens": [
        build_target("token_logits", {"k": 4}),
        build_target("token_logits", {"encoding": "sampled", "samples": 8}),
    ],
    "packed": [build_target("token_logits", {"k": 8, "value_bits": 7, "index_bits": 17})],
}


@pytest.fixture(scope="module")
def stores(tmp_path_factory, _trained_teacher, digits_small, _lm_teacher, lm_train) -> dict[str, Path]:
    """One store of each kind: image targets of every encoding (two views), token top-k, sampled and packed."""
    root = tmp_path_factory.mktemp("direct")
    views = ViewTransform(count=2, seed=0, mean=MEAN, std=STD)
    made = {}
    for name, targets in IMAGE_STORES.items():
        made[name] = root / f"{name}.zarr"
        cache_digits(made[name], _trained_teacher, digits_small, views, targets)
    for name, targets in TOKEN_STORES.items():
        made[name] = root / f"{name}.zarr"
        precompute(
            _lm_teacher,
            lm_train,
            str(made[name]),
            targets=targets,
            views=TokenViews(),
            num_classes=300,
            teacher_name="lm",
            shard_samples=64,
            batch_size=16,
            progress=False,
        )
    return made


def every_array(path: Path):
    """``(cache, owner, record)`` for every array of the store at ``path``."""
    cache = open_store(str(path))
    for owner, records in cache.owner_arrays().items():
        for record in records.values():
            yield cache, owner, record


def engines(path: Path, array: str) -> np.ndarray:
    """The array as zarr-python reads it, after checking tensorstore reads the same bytes."""
    by_zarr = zarr.open_array(str(path / array), mode="r")[...]
    spec = {"driver": "zarr3", "kvstore": {"driver": "file", "path": str(path / array)}}
    by_tensorstore = tensorstore.open(spec, read=True).result().read().result()
    assert by_zarr.dtype == by_tensorstore.dtype and by_zarr.tobytes() == by_tensorstore.tobytes(), array
    return by_zarr


@pytest.mark.parametrize("kind", [*IMAGE_STORES, *TOKEN_STORES])
def test_every_array_reads_the_bytes_zarr_and_tensorstore_read(stores, kind, monkeypatch):
    monkeypatch.setattr("kdcache.store.arrays.DEFAULT_CHUNK_CACHE_BYTES", 1)  # a cache of one chunk: rows read alone
    rng = np.random.default_rng(0)
    paths = {"direct": 0, "zarr": 0}
    for cache, owner, record in every_array(stores[kind]):
        expected = engines(stores[kind], record.path)
        loaded = cache.array_reader(record, owner, in_memory=True)
        assert loaded.read_all().tobytes() == expected.tobytes(), record.path
        reader = cache.array_reader(record, owner, in_memory=False)
        assert reader.direct == (record.compressor == "none"), record.path
        paths["direct" if reader.direct else "zarr"] += 1
        n = record.shape[0]
        rows = np.concatenate([rng.permutation(n), rng.integers(0, n, 40)])  # every row, then repeats
        whole = reader.read_rows(rows)  # first touch of every shard: whole chunks from the verified bytes
        assert whole.tobytes() == expected[rows].tobytes(), record.path
        for batch in np.array_split(rows, len(rows) // 3):  # three rows a call: row reads where the chunk is not held
            assert reader.read_rows(batch).tobytes() == expected[batch].tobytes(), record.path
        if record.path.startswith("teachers/"):  # axis 1 is the view
            picked = rng.integers(0, record.shape[1], len(rows))
            assert reader.read_rows(rows, picked).tobytes() == expected[rows, picked].tobytes(), record.path
    assert paths["direct"] > 0 and (paths["zarr"] > 0) == (kind != "packed"), paths  # zstd / lz4 arrays: zarr


def test_small_calls_read_rows_not_chunks(stores, monkeypatch):
    """With every shard verified and the chunk cache too small for the array, a call wanting a few rows of a chunk
    reads those rows (the cache stays empty); one wanting most of a chunk reads and caches it whole."""
    monkeypatch.setattr("kdcache.store.arrays.DEFAULT_CHUNK_CACHE_BYTES", 1)
    cache = open_store(str(stores["fp16"]))
    record = cache.teacher("t8").targets["logits"].arrays["logits"]
    reader = cache.array_reader(record, "teachers/t8", in_memory=False)
    for index in range(reader.num_shards):
        reader.verify_shard(index)
    expected = engines(stores["fp16"], record.path)
    rows = np.array([5, 200, 131, 7])
    assert reader.read_rows(rows).tobytes() == expected[rows].tobytes()
    assert not len(reader._chunk_slab().cached()) and reader.chunks_read == {0: 1, 1: 1}
    assert reader.read_rows(np.arange(128, 256)).tobytes() == expected[128:256].tobytes()
    assert reader._chunk_slab().cached().tolist() == [1]


def copy_store(stores, tmp_path) -> Path:
    path = tmp_path / "s.zarr"
    shutil.copytree(stores["fp16"], path)
    return path


@pytest.mark.parametrize("call", ["rows", "chunks"])
@pytest.mark.parametrize("edit", ["flip", "truncate"])
def test_bytes_changed_after_verification_are_refused(stores, tmp_path, monkeypatch, call, edit):
    """A flipped byte or a truncated shard file, after the shard was verified, is refused on the row path and on
    the whole-chunk path, as a typed error naming the file (never a wrong value, never a crash)."""
    monkeypatch.setattr("kdcache.store.arrays.DEFAULT_CHUNK_CACHE_BYTES", 1)
    path = copy_store(stores, tmp_path)
    cache = open_store(str(path))
    record = cache.teacher("t8").targets["logits"].arrays["logits"]
    reader = cache.array_reader(record, "teachers/t8", in_memory=False)
    rows = np.arange(256)
    expected = reader.read_rows(rows)  # shards 0 and 1 verified; chunk 1 cached, chunk 0 evicted
    key = path / reader.files[0].key
    raw = bytearray(key.read_bytes())
    offset = reader._spans[0][0].offset + 10 * int(np.prod(record.shape[1:])) * 2  # inside row 10 of chunk 0
    if edit == "flip":
        raw[offset] ^= 0x01
        key.write_bytes(bytes(raw))
    else:
        key.write_bytes(bytes(raw[:offset]))
    wanted = np.array([10]) if call == "rows" else np.arange(128)
    with pytest.raises(CorruptShardError, match=r"file teachers/t8/logits/c/0/0/0\): inner chunk 0 read again differs"):
        reader.read_rows(wanted)
    if call == "rows" and edit == "flip":  # the other rows of the chunk are still the verified bytes
        assert reader.read_rows(np.array([11, 12])).tobytes() == expected[[11, 12]].tobytes()


def test_a_chunk_failing_its_crc32c_is_named() -> None:
    """The crc32c kdcache's layout stores after each chunk's values is checked when its shard is verified."""
    layout = DirectLayout([4, 3], "float16")
    values = np.arange(12, dtype="<f2").tobytes()
    array = zarr.create_array(
        zarr.storage.MemoryStore(),
        shape=(4, 3),
        chunks=(4, 3),
        shards=(4, 3),
        dtype="float16",
        compressors=[zarr.codecs.Crc32cCodec()],
    )
    array[...] = np.arange(12, dtype="<f2").reshape(4, 3)
    stored = bytes(array.store._store_dict["c/0/0"].to_bytes())[: len(values) + 4]  # the shard's first inner chunk
    assert stored[: len(values)] == values and layout.check_chunk(memoryview(stored)) is None
    bad = bytearray(stored)
    bad[3] ^= 0x10
    assert layout.check_chunk(memoryview(bytes(bad))) == "fails its crc32c checksum"
    assert layout.check_chunk(memoryview(stored[:-1])) == f"is {len(stored) - 1} bytes where its shape needs 28"


# per-sample reads in random order are this test's point; the advice they draw is tested in tests/train/test_items.py
@pytest.mark.filterwarnings("ignore::kdcache.errors.PerformanceWarning")
def test_uniform_dataloader_over_a_streamed_store_returns_the_memmap_rows(stores, tmp_path, digits_small, monkeypatch):
    """A plain ``DataLoader(shuffle=True)`` of two workers over the streamed store (a one-chunk cache: every sample
    is a row read) gives exactly the rows a memmap of the same array gives."""
    monkeypatch.setattr("kdcache.store.arrays.DEFAULT_CHUNK_CACHE_BYTES", 1)
    views = ViewTransform(count=2, seed=0, mean=MEAN, std=STD)
    raw = tmp_path / "logits.npy"
    np.save(raw, engines(stores["fp16"], "teachers/t8/logits"))
    mapped = np.load(raw, mmap_mode="r")
    data = CachedDataset(
        digits_small, open_store(str(stores["fp16"])), teacher="t8", targets=["logits"], views=views, ram_budget_bytes=0
    )
    assert not data.readers["logits"]["logits"].in_memory
    data.set_epoch(0)
    torch.manual_seed(0)
    seen = []
    for items in DataLoader(data, shuffle=True, num_workers=2, batch_size=23):
        index, view = items["index"].numpy(), items["view"].numpy()
        got = items["targets"]["logits"]["logits"].numpy()
        assert got.tobytes() == np.ascontiguousarray(mapped[index, view]).tobytes()
        seen.append(index)
    assert sorted(np.concatenate(seen).tolist()) == list(range(len(digits_small)))
