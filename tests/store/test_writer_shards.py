"""The writer makes shard files itself (:mod:`kdcache.store.shardencode`): they must be zarr-python's own bytes for
the same rows, for every dtype, compressor, view axis and edge kdcache's arrays have, and readable by plain zarr.
Values are small integers and halves, so no byte here depends on a float kernel."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import zarr

from kdcache.store.layout import ArraySpec, shard_key, shard_ranges
from kdcache.store.shardencode import ShardEncoder
from kdcache.store.writer import array_record, create_array

CASES = [  # dtype, compressor, per-sample shape, views, samples, samples per shard
    ("float16", "none", (5,), None, 40, 16),
    ("float16", "zstd", (3, 4), 2, 37, 16),  # a partial last shard with a partial inner chunk
    ("float32", "lz4", (), None, 9, 64),  # one shard larger than the array
    ("uint8", "none", (16,), 2, 40, 16),
    ("uint16", "zstd", (7,), None, 37, 64),
    ("int64", "none", (), None, 37, 16),
    ("int8", "lz4", (10,), None, 100, 64),
    ("float32", "zstd", (2,), 3, 129, 64),
]


def rows_of(shape: tuple[int, ...], dtype: str, seed: int) -> np.ndarray:
    values = np.random.default_rng(seed).integers(0, 100, size=shape)
    return (values / 2).astype(dtype) if np.issubdtype(np.dtype(dtype), np.floating) else values.astype(dtype)


@pytest.mark.parametrize(("dtype", "compressor", "sample", "views", "n", "shard"), CASES)
def test_shard_bytes_are_zarrs_own(tmp_path: Path, dtype, compressor, sample, views, n, shard) -> None:
    spec = ArraySpec("teachers/t/x", sample, dtype, compressor, views=views)
    group = zarr.open_group(str(tmp_path), mode="w", zarr_format=3)
    array = create_array(group, spec, n, shard).with_config({"write_empty_chunks": True})
    encoder = ShardEncoder.from_metadata(json.loads((tmp_path / spec.path / "zarr.json").read_text()))
    record = array_record(spec, n, shard)
    written = []
    for index, (lo, hi) in enumerate(shard_ranges(n, shard)):
        rows = rows_of((hi - lo, *record.shape[1:]), dtype, index)
        array[lo:hi] = rows  # zarr-python's whole-shard write
        assert (
            bytes(encoder.encode(index, rows))
            == (tmp_path / shard_key(spec.path, index, len(record.shape))).read_bytes()
        )
        written.append(rows)
    np.testing.assert_array_equal(zarr.open_array(str(tmp_path / spec.path), mode="r")[:], np.concatenate(written))


def test_an_array_laid_out_otherwise_is_refused(tmp_path: Path) -> None:
    group = zarr.open_group(str(tmp_path), mode="w", zarr_format=3)
    group.create_array("x", shape=(32, 4), chunks=(8, 4), shards=(16, 4), dtype="float32", compressors=None)
    meta = json.loads((tmp_path / "x" / "zarr.json").read_text())  # no crc32c, and zarr's own fill value 0.0
    with pytest.raises(ValueError, match="inner codecs"):
        ShardEncoder.from_metadata(meta)


def test_rows_of_another_shape_are_refused(tmp_path: Path) -> None:
    spec = ArraySpec("x", (4,), "float16")
    create_array(zarr.open_group(str(tmp_path), mode="w", zarr_format=3), spec, 40, 16)
    encoder = ShardEncoder.from_metadata(json.loads((tmp_path / "x" / "zarr.json").read_text()))
    with pytest.raises(ValueError, match="shard 2 needs rows"):
        encoder.encode(2, np.zeros((16, 4), dtype=np.float16))  # the last shard holds 8 samples
