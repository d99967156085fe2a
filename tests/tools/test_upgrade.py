"""A format-1 store (a real one, written by kdcache before format 2 and kept in tests/store/v1_store) upgrades in
place to a store that opens, verifies and trains like a fresh format-2 store of the same teacher and data."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
import zarr

from kdcache import CachedDataset, ViewTransform, build_view_op, open_store
from kdcache.datasets import Subset
from kdcache.errors import StoreFormatError, StoreMismatchError
from kdcache.store import FORMAT_VERSION, scrub
from kdcache.tools.upgrade import upgrade_store
from tests.helpers import kdcache
from tests.store.test_golden import build_golden_store, golden_dataset

V1 = Path(__file__).resolve().parents[1] / "store" / "v1_store"


def golden_views() -> ViewTransform:
    return ViewTransform(
        count=2, seed=3, mean=(0.5,), std=(0.25,), augment=[build_view_op("horizontal_flip", {"p": 0.5})]
    )


@pytest.fixture
def v1(tmp_path) -> Path:
    return Path(shutil.copytree(V1, tmp_path / "v1.zarr"))


def test_a_format_one_store_is_refused_with_the_way_to_upgrade(v1):
    with pytest.raises(StoreFormatError, match=r"is format 1.*kdcache upgrade STORE --pipeline P.yaml"):
        open_store(str(v1))


def test_the_upgraded_store_equals_a_fresh_one_except_the_old_log_sum_exp(v1, tmp_path):
    upgraded = upgrade_store(str(v1), golden_dataset(), progress=False)
    fresh = build_golden_store(tmp_path / "fresh.zarr")
    assert upgraded.manifest.format_version == FORMAT_VERSION and scrub(str(v1)) == []
    mine, theirs = zarr.open_group(str(v1), mode="r"), zarr.open_group(str(fresh), mode="r")
    for name, array in theirs.members(max_depth=None):
        if isinstance(array, zarr.Array):
            assert json.loads((v1 / name / "zarr.json").read_text()) == json.loads(
                (fresh / name / "zarr.json").read_text()
            )
            if name != "teachers/golden/logits_topk/lse":  # format 1 took it over the float32 logits
                np.testing.assert_array_equal(mine[name][:], array[:])
    data = CachedDataset(golden_dataset(), upgraded, teacher="golden", targets=["logits"], views=golden_views())
    assert data[np.arange(40)].stored["logits"]["logits"].shape == (40, 5)


def test_an_upgrade_refuses_another_dataset_and_leaves_the_store_as_it_was(v1):
    before = {p: p.read_bytes() for p in v1.rglob("*") if p.is_file()}
    data = golden_dataset()
    shuffled = Subset(data, np.random.default_rng(0).permutation(len(data)), tag="shuffled")
    with pytest.raises(StoreMismatchError, match=r"built from another dataset"):
        upgrade_store(str(v1), shuffled, progress=False)
    assert {p: p.read_bytes() for p in v1.rglob("*") if p.is_file()} == before


def test_an_upgrade_refuses_a_damaged_format_one_store(v1):
    meta = json.loads((v1 / "teachers/golden/logits/zarr.json").read_text())
    meta["codecs"][0]["configuration"]["codecs"][0]["configuration"]["endian"] = "big"
    (v1 / "teachers/golden/logits/zarr.json").write_text(json.dumps(meta))
    with pytest.raises(StoreFormatError, match=r"cannot be upgraded.*logits/zarr.json is not what kdcache writes"):
        upgrade_store(str(v1), golden_dataset(), progress=False)
    torch.manual_seed(0)  # nothing else to check: the refusal wrote nothing (the manifest is still format 1)
    assert json.loads((v1 / "kdcache.manifest.json").read_text())["format_version"] == 1


def test_the_cli_upgrades_with_a_pipeline(tmp_path):
    result = kdcache("upgrade", str(tmp_path / "missing.zarr"), "--pipeline", "pipelines/digits_kd.yaml")
    assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr
    assert "kdcache: error: store" in result.stderr and "does not exist" in result.stderr
    assert not (tmp_path / "missing.zarr").exists()  # nothing created, not even a lock


V2 = Path(__file__).resolve().parents[1] / "store" / "v2_stores"
"""Real format-2 stores, written by kdcache at commit 918b4ac (format 2) from the golden teacher and data
(``GoldenTeacher``, ``golden_dataset``; fp32 logits, shard_samples 64, teacher ``golden``): ``ops`` with
``golden_views()``, ``pipeline`` with ``v2.Compose([v2.RandomApply([v2.RandomHorizontalFlip(p=1.0)], p=0.3)])``
and ``eval=v2.Identity()`` (count 3, seed 5, mean 0.5, std 0.25)."""


def test_a_format_two_store_is_refused_with_the_way_to_upgrade(tmp_path):
    store = shutil.copytree(V2 / "ops", tmp_path / "ops.zarr")
    with pytest.raises(StoreFormatError, match=r"is format 2.*kdcache upgrade STORE --pipeline P.yaml"):
        open_store(str(store))


def test_a_format_two_store_of_kdcache_ops_upgrades_and_trains_with_every_view_proven(tmp_path):
    store = shutil.copytree(V2 / "ops", tmp_path / "ops.zarr")
    with pytest.raises(StoreMismatchError, match="other views"):  # the views must be the recorded ones
        upgrade_store(str(store), golden_dataset(), views=ViewTransform(count=2, seed=4), progress=False)
    upgraded = upgrade_store(str(store), golden_dataset(), views=golden_views(), progress=False)
    assert upgraded.manifest.format_version == FORMAT_VERSION and scrub(str(store)) == []
    fresh = build_golden_store(tmp_path / "fresh.zarr")
    upgraded_digests, fresh_digests = (zarr.open_array(f"{p}/samples/view_digest")[:] for p in (store, fresh))
    np.testing.assert_array_equal(upgraded_digests, fresh_digests)  # the digests of the same views
    train = CachedDataset(golden_dataset(), upgraded, views=golden_views())
    for epoch in range(2):
        train.set_epoch(epoch)
        assert train[np.arange(8)].views.tolist() == [(i + epoch) % 2 for i in range(8)]


def test_a_format_two_store_of_a_torchvision_pipeline_is_refused_to_be_rebuilt(tmp_path):
    store = shutil.copytree(V2 / "pipeline", tmp_path / "pipeline.zarr")
    before = (store / "kdcache.manifest.json").read_bytes()
    with pytest.raises(StoreFormatError, match=r"recorded by each step's repr.*Rebuild the store"):
        upgrade_store(str(store), golden_dataset(), views=golden_views(), progress=False)
    assert (store / "kdcache.manifest.json").read_bytes() == before  # nothing written


def test_a_format_two_store_is_upgraded_only_from_the_samples_it_was_built_from(tmp_path):
    """One pixel edited outside the fingerprint's probes: the format-2 (BLAKE2b) digests refuse it."""
    from kdcache import TensorDataset
    from kdcache.datasets.fingerprint import CONTENT_PROBES

    store = shutil.copytree(V2 / "ops", tmp_path / "ops.zarr")
    images, labels = golden_dataset().get_batch(np.arange(40))
    probes = set(np.linspace(0, 39, num=CONTENT_PROBES).round().astype(int).tolist())
    edited = next(i for i in range(40) if i not in probes)
    images = images.clone()
    images[edited, 0, 1, 1] += 1 / 16
    dataset = TensorDataset(images, labels, split="train", source={"kind": "golden"})
    before = (store / "kdcache.manifest.json").read_bytes()
    with pytest.raises(StoreMismatchError, match=rf"sample\(s\) \[{edited}\] of the dataset given to the upgrade"):
        upgrade_store(str(store), dataset, views=golden_views(), progress=False)
    assert (store / "kdcache.manifest.json").read_bytes() == before  # still format 2, nothing published
    assert (
        upgrade_store(str(store), golden_dataset(), views=golden_views(), progress=False).manifest.format_version == 3
    )
