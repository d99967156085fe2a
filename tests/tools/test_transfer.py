"""`kdcache export` / `kdcache import`: the same arrays and manifest in HDF5, and back to an identical store."""

from __future__ import annotations

import subprocess
import sys

import h5py
import numpy as np
import pytest
import torch
import zarr

from kdcache.errors import DestinationExistsError, StoreFormatError, StoreIncompleteError
from kdcache.models import DigitsCNN
from kdcache.store import open_store, read_manifest
from kdcache.store.location import StoreLocation
from kdcache.store.manifest import write_manifest
from kdcache.targets import build_target
from kdcache.tools.transfer import MANIFEST_ATTR, export_hdf5, import_hdf5
from tests.conftest import ROOT, cache_digits
from tests.helpers import store_files

ARRAYS = ["samples/index", "samples/label", "teachers/t8/logits", "teachers/bf/logits"]


@pytest.fixture
def store(tmp_path, teacher, digits_small, views):
    """Two teachers (float16 and bfloat16 logits), 300 samples in three shards."""
    path = tmp_path / "train.zarr"
    torch.manual_seed(1)
    for name, model, dtype in [("t8", teacher, "float16"), ("bf", DigitsCNN(10, width=4).eval(), "bfloat16")]:
        cache_digits(path, model, digits_small, views, [build_target("logits", {"dtype": dtype})], teacher_name=name)
    return path


def test_round_trip_is_exact(store, tmp_path):
    exported = export_hdf5(str(store), tmp_path / "train.h5", progress=False)
    group = zarr.open_group(str(store), mode="r")
    with h5py.File(exported, "r") as f:
        assert f.attrs[MANIFEST_ATTR] == (store / "kdcache.manifest.json").read_text()
        for path in ARRAYS:
            original = group[path][:]
            assert f[path].dtype == original.dtype and f[path].shape == original.shape
            assert f[path][()].tobytes() == original.tobytes()
        assert f["teachers/bf/logits"].dtype == np.uint16  # bfloat16 stays its raw bits...
        assert '"dtype": "bfloat16"' in f["teachers/bf/logits"].attrs["kdcache.target"]  # ...and says so

    imported = import_hdf5(exported, str(tmp_path / "imported.zarr"), progress=False)
    assert imported.check_digests() == []
    assert read_manifest(imported.location) == read_manifest(StoreLocation(store))
    assert (tmp_path / "imported.zarr" / "kdcache.manifest.json").read_bytes() == (
        store / "kdcache.manifest.json"
    ).read_bytes()
    copy = zarr.open_group(str(tmp_path / "imported.zarr"), mode="r")
    for path in ARRAYS:
        assert copy[path][:].tobytes() == group[path][:].tobytes()
    assert store_files(tmp_path / "imported.zarr") == store_files(store)  # same zarr: the very same shard files


def test_nothing_is_overwritten(store, tmp_path):
    target = tmp_path / "taken.h5"
    target.write_bytes(b"precious")
    with pytest.raises(DestinationExistsError, match=r"already exists; export writes a new file"):
        export_hdf5(str(store), target, progress=False)
    assert target.read_bytes() == b"precious"
    exported = export_hdf5(str(store), tmp_path / "ok.h5", progress=False)
    before = store_files(store)
    with pytest.raises(DestinationExistsError, match=r"already exists; import builds a new store"):
        import_hdf5(exported, str(store), progress=False)
    assert store_files(store) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ok.h5", "taken.h5", "train.zarr"]  # no temp files left


def test_a_foreign_or_damaged_file_is_refused_before_writing(store, tmp_path):
    foreign = tmp_path / "foreign.h5"
    with h5py.File(foreign, "w") as f:
        f["x"] = np.arange(3)
    with pytest.raises(StoreFormatError, match=r"is not a kdcache export: it has no 'kdcache.manifest' attribute"):
        import_hdf5(foreign, str(tmp_path / "a.zarr"), progress=False)

    damaged = export_hdf5(str(store), tmp_path / "damaged.h5", progress=False)
    with h5py.File(damaged, "r+") as f:
        del f["teachers/bf/logits"]
        f["teachers/bf/logits"] = np.zeros((300, 1, 9), dtype=np.uint16)
    with pytest.raises(
        StoreFormatError, match=r"teachers/bf/logits should have shape \[300, 1, 10\].*found \[300, 1, 9\]"
    ):
        import_hdf5(damaged, str(tmp_path / "b.zarr"), progress=False)
    assert not (tmp_path / "a.zarr").exists() and not (tmp_path / "b.zarr").exists()


def test_an_incomplete_store_is_not_exported(store, tmp_path):
    location = StoreLocation(store)
    manifest = read_manifest(location)
    manifest.teachers["bf"] = manifest.teachers["bf"].model_copy(update={"status": "building"})
    write_manifest(location, manifest)
    with pytest.raises(StoreIncompleteError, match=r"is building; only complete stores are exported"):
        export_hdf5(str(store), tmp_path / "x.h5", progress=False)
    assert not (tmp_path / "x.h5").exists()


def test_cli_export_then_import(store, tmp_path):
    def kdcache(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "kdcache", *args], cwd=ROOT, capture_output=True, text=True)

    exported = kdcache("export", str(store), str(tmp_path / "out.h5"), "--quiet")
    assert exported.returncode == 0, exported.stderr
    imported = kdcache("import", str(tmp_path / "out.h5"), str(tmp_path / "back.zarr"), "--quiet")
    assert imported.returncode == 0, imported.stderr
    assert "300 samples, teachers ['bf', 't8']" in imported.stdout
    assert open_store(str(tmp_path / "back.zarr")).check_digests() == []
