"""Stage one writes a real sharded Zarr v3 store that kdcache, plain zarr and tensorstore all read back exactly."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import zarr

from kdcache.datasets.fingerprint import dataset_fingerprint
from kdcache.store import FORMAT_VERSION, open_store, read_manifest
from kdcache.store.location import StoreLocation
from kdcache.train import CachedDataset
from tests.conftest import cache_digits


@pytest.fixture
def store(tmp_path: Path, teacher, digits_small, views, logits_target) -> Path:
    path = tmp_path / "train.zarr"
    report = cache_digits(path, teacher, digits_small, views, [logits_target])
    assert report.complete and report.shards_written == 3 and report.samples_written == 300
    return path


def live_logits(teacher, dataset, views) -> torch.Tensor:
    raw, _ = dataset.get_batch(np.arange(len(dataset)))
    with torch.no_grad():
        return teacher(views(raw, np.arange(len(dataset)), np.zeros(len(dataset), dtype=np.int64)))


def test_logits_read_back_equal_teacher_up_to_fp16(store, teacher, digits_small, views):
    cache = open_store(str(store))
    reader = cache.array_reader(cache.teacher("t8").targets["logits"].arrays["logits"], "teachers/t8", in_memory=True)
    stored = reader.read_all()
    expected = live_logits(teacher, digits_small, views)
    assert stored.shape == (300, 1, 10) and stored.dtype == np.float16
    np.testing.assert_array_equal(stored[:, 0], expected.numpy().astype(np.float16))


def test_plain_zarr_reads_the_same_bytes(store, teacher, digits_small, views):
    group = zarr.open_group(str(store), mode="r")
    array = group["teachers/t8/logits"]
    assert array.shards == (128, 1, 10) and array.chunks[0] <= 128
    np.testing.assert_array_equal(array[:][:, 0], live_logits(teacher, digits_small, views).numpy().astype(np.float16))
    np.testing.assert_array_equal(group["samples/index"][:], np.arange(300))
    np.testing.assert_array_equal(group["samples/label"][:], digits_small.all_labels())
    assert group.attrs["format_version"] == FORMAT_VERSION and group.attrs["kdcache"]["status"] == "complete"


def test_independent_zarr_implementation_reads_the_same_values(store):
    import tensorstore as ts

    spec = {"driver": "zarr3", "kvstore": {"driver": "file", "path": str(store / "teachers/t8/logits")}}
    values = ts.open(spec, read=True).result().read().result()
    np.testing.assert_array_equal(values, zarr.open_array(str(store / "teachers/t8/logits"), mode="r")[:])


def test_array_metadata_follows_the_design(store):
    meta = json.loads((store / "teachers/t8/logits/zarr.json").read_text())
    assert meta["zarr_format"] == 3 and meta["fill_value"] == "NaN"
    (sharding,) = meta["codecs"]
    assert sharding["name"] == "sharding_indexed"
    inner = [c["name"] for c in sharding["configuration"]["codecs"]]
    assert inner[0] == "bytes" and inner[-1] == "crc32c"  # every stored byte is checksummed
    assert [c["name"] for c in sharding["configuration"]["index_codecs"]] == ["bytes", "crc32c"]


def test_manifest_records_fingerprints_commits_and_accuracy(store, digits_small, teacher, views):
    manifest = read_manifest(StoreLocation(store))
    assert manifest.status == "complete" and manifest.num_samples == 300 and manifest.shard_samples == 128
    assert manifest.dataset == dataset_fingerprint(digits_small, num_classes=10)
    record = manifest.teachers["t8"]
    assert [c.index for c in record.shards] == [0, 1, 2]
    assert [(c.start, c.stop) for c in record.shards] == [(0, 128), (128, 256), (256, 300)]
    predictions = live_logits(teacher, digits_small, views).argmax(1).numpy()
    assert record.accuracy == pytest.approx(float((predictions == digits_small.all_labels()).mean()))
    for commit in record.shards:
        digest = commit.files["teachers/t8/logits"]
        assert (store / digest.key).stat().st_size == digest.nbytes


def test_streamed_reads_equal_in_memory_reads(store):
    cache = open_store(str(store))
    record = cache.teacher("t8").targets["logits"].arrays["logits"]
    rows = np.random.default_rng(0).permutation(300)[:77]
    in_ram = cache.array_reader(record, "teachers/t8", in_memory=True).read_rows(rows, np.zeros(77, dtype=np.int64))
    streamed = cache.array_reader(record, "teachers/t8", in_memory=False).read_rows(rows, np.zeros(77, dtype=np.int64))
    np.testing.assert_array_equal(in_ram, streamed)


def test_plain_zarr_users_decode_every_encoding_from_the_array_attributes(tmp_path, teacher, digits_small, views):
    """What docs/store-format.md shows: attributes say what each array is, so bf16, int8 and top-k decode without
    kdcache; the values equal what kdcache's own decoders give."""
    from kdcache.targets import build_target

    targets = [
        build_target("logits", {"dtype": "bfloat16"}),
        build_target("logits", {"encoding": "int8"}),
        build_target("logits", {"encoding": "topk", "k": 3, "temperatures": [1.0, 4.0]}),
    ]
    cache_digits(tmp_path / "s.zarr", teacher, digits_small, views, targets)
    group = zarr.open_group(str(tmp_path / "s.zarr"), mode="r")
    logits = group["teachers/t8/logits"]
    about = logits.attrs["kdcache"]
    assert about["dtype"] == "bfloat16" and about["axes"] == ["sample", "view", "class"] and logits.dtype == np.uint16
    bf16 = (logits[:].astype(np.uint32) << 16).view(np.float32)  # bfloat16 is the top half of a float32
    q, scale, offset = (group[f"teachers/t8/logits_int8/{a}"][:] for a in ("q", "scale", "offset"))
    assert group["teachers/t8/logits_int8/q"].attrs["kdcache"]["meaning"].startswith("logits quantised per row")
    int8 = offset[..., None] + scale[..., None] * (q.astype(np.float32) + 128)
    values, lse = group["teachers/t8/logits_topk/values"][:], group["teachers/t8/logits_topk/lse"][:]
    assert group["teachers/t8/logits_topk/lse"].attrs["kdcache"]["axes"] == ["sample", "view", "temperature"]
    p_top = np.exp(values.astype(np.float64) / 4.0 - lse[..., 1:2])  # T = 4, the second declared temperature
    cache = open_store(str(tmp_path / "s.zarr"))
    data = CachedDataset(
        digits_small, cache, teacher="t8", targets=["logits", "logits_int8", "logits_topk"], views=views
    )[np.arange(300)].to("cpu")
    np.testing.assert_array_equal(bf16[:, 0], data.targets["logits"].numpy())
    np.testing.assert_allclose(int8[:, 0], data.targets["logits_int8"].numpy(), rtol=0, atol=1e-5)
    topk = data.targets["logits_topk"]
    np.testing.assert_allclose(p_top[:, 0], (topk.values / 4 - topk.lse_at(4.0)[:, None]).exp().numpy(), rtol=1e-5)
    assert group["samples/digest"].attrs["kdcache"]["axes"] == ["sample", "byte"] and group["samples/digest"].shape == (
        300,
        16,
    )


def test_a_chunk_read_again_is_checked_against_the_bytes_that_were_verified(
    store, tmp_path, digits_small, views, logits_target, monkeypatch
):
    """Later epochs of a store larger than the chunk cache read chunks again: a shard file replaced after it was
    verified (here by a valid shard of another store, which crc32c accepts) is refused, not decoded."""
    from kdcache.errors import CorruptShardError
    from kdcache.models import DigitsCNN
    from kdcache.store import arrays

    torch.manual_seed(7)
    cache_digits(tmp_path / "other.zarr", DigitsCNN(10, width=8).eval(), digits_small, views, [logits_target])
    monkeypatch.setattr(arrays, "DEFAULT_CHUNK_CACHE_BYTES", 1)  # a cache of one chunk: every re-read is a miss
    cache = open_store(str(store))
    record = cache.teacher("t8").targets["logits"].arrays["logits"]
    reader = cache.array_reader(record, "teachers/t8", in_memory=False)
    rows, views_of = np.arange(300), np.zeros(300, dtype=np.int64)
    expected = cache.array_reader(record, "teachers/t8", in_memory=True).read_rows(rows, views_of)
    np.testing.assert_array_equal(reader.read_rows(rows, views_of), expected)  # every shard verified, chunk 0 evicted
    np.testing.assert_array_equal(reader.read_rows(rows[:5], views_of[:5]), expected[:5])  # read again, unchanged
    key = "teachers/t8/logits/c/0/0/0"
    other = (tmp_path / "other.zarr" / key).read_bytes()
    assert len(other) == (store / key).stat().st_size and other != (store / key).read_bytes()
    (store / key).write_bytes(other)
    reader.read_rows(rows[200:], views_of[200:])  # chunks 1 and 2: chunk 0 evicted again
    with pytest.raises(
        CorruptShardError,
        match=r"shard 0 \(samples 0\.\.127, file teachers/t8/logits/c/0/0/0\): "
        r"inner chunk 0 read again differs from the bytes whose sha256 was checked",
    ):
        reader.read_rows(rows[:5], views_of[:5])
    assert reader.chunks_read == {0: 2, 1: 2, 2: 2}  # 0, 1, 2; 0; 1, 2 (the refused read is not counted)
