"""Per-sample access: a plain DataLoader with its default collation gives the batches batch_loader gives."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from kdcache.errors import ForeignItemsError, PerformanceWarning, UndecodedBatchError
from kdcache.losses import kd_divergence
from kdcache.store import open_store
from kdcache.targets import build_target
from kdcache.train import BlockShuffleSampler, CachedDataset
from kdcache.views import ViewTransform, build_view_op
from tests.conftest import MEAN, STD, cache_digits


@pytest.fixture
def views() -> ViewTransform:
    return ViewTransform(count=3, seed=2, mean=MEAN, std=STD, augment=[build_view_op("random_crop", {"padding": 2})])


@pytest.fixture
def store(tmp_path, teacher, digits_small, views):
    cache_digits(tmp_path / "s.zarr", teacher, digits_small, views, [build_target("logits", {"encoding": "int8"})])
    return tmp_path / "s.zarr"


@pytest.mark.parametrize("workers", [0, 2])
def test_default_collation_equals_the_batch_path(store, digits_small, views, workers):
    train = CachedDataset(digits_small, open_store(store), views=views)  # one teacher, every target
    assert list(train.readers) == ["logits_int8"] and len(train.readers["logits_int8"]) == 3  # q, scale, offset
    sampler = BlockShuffleSampler(train, seed=5)
    sampler.set_epoch(1)
    loader = DataLoader(train, batch_size=32, sampler=sampler, num_workers=workers)
    seen = []
    for items in loader:
        batch = train.as_batch(items).to("cpu")
        reference = train[batch.indices.numpy()].to("cpu")
        torch.testing.assert_close(batch.inputs, reference.inputs, rtol=0, atol=0)
        torch.testing.assert_close(batch.targets, reference.targets, rtol=0, atol=0)
        assert batch.views.tolist() == reference.views.tolist() == ((batch.indices + 1) % views.count).tolist()
        assert batch.labels.tolist() == reference.labels.tolist()
        seen.append(batch.indices.numpy())
    assert sorted(np.concatenate(seen).tolist()) == list(range(len(digits_small)))


def test_targets_read_before_to_device_are_refused_with_the_fix(store, digits_small, views, teacher):
    """A new user's loop that forgets ``.to(device)``: the targets are int8 codes, so reading them is refused with
    what to call, instead of ``AttributeError: 'dict' object has no attribute 'float'`` inside the loss."""
    train = CachedDataset(digits_small, open_store(store), views=views)
    items = next(iter(DataLoader(train, batch_size=16, sampler=BlockShuffleSampler(train, seed=0))))
    batch = train.as_batch(items)
    assert batch.stored["logits_int8"]["logits_int8/q"].dtype == torch.int8  # what the store holds, still encoded
    with pytest.raises(
        UndecodedBatchError,
        match=r"\['logits_int8'\] are still the store's encoded arrays; call "
        r"batch = batch.to\(device\) first",
    ):
        kd_divergence(teacher(batch.inputs), batch.targets["logits_int8"], 4.0)
    moved = batch.to("cpu")
    assert moved.targets["logits_int8"].shape == (16, 10) and moved.targets["logits_int8"].dtype == torch.float32
    again = moved.to("cpu")  # moving a decoded batch keeps its targets
    torch.testing.assert_close(again.targets, moved.targets, rtol=0, atol=0)
    with torch.no_grad():
        loss = float(kd_divergence(teacher(moved.inputs), moved.targets["logits_int8"], 4.0))
    assert 0 <= loss < 1e-3  # the teacher against its own int8-cached logits of the same views


def test_streamed_per_sample_reads_warn_unless_block_sampled(store, digits_small, views):
    streamed = CachedDataset(digits_small, open_store(store), views=views, ram_budget_bytes=0)
    with pytest.warns(PerformanceWarning, match="BlockShuffleSampler"):
        streamed[3]
    ordered = CachedDataset(digits_small, open_store(store), views=views, ram_budget_bytes=0)
    order = list(BlockShuffleSampler(ordered, seed=0))
    assert sorted(order) == list(range(len(digits_small)))
    assert len(np.unique(np.asarray(order[:64]) // ordered.read_block())) <= 8  # one window of chunks at a time
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        item = ordered[order[0]]
    assert item["index"] == order[0] and item["targets"]["logits_int8"]["logits_int8/q"].dtype == torch.int8


def test_views_made_of_kdcache_ops_are_rebuilt_from_the_store(store, digits_small, views):
    rebuilt = CachedDataset(digits_small, open_store(store))  # no teacher, targets or views given
    assert rebuilt.views.spec() == views.spec()
    given = CachedDataset(digits_small, open_store(store), views=views)
    for epoch in (0, 1):
        rebuilt.set_epoch(epoch)
        given.set_epoch(epoch)
        torch.testing.assert_close(rebuilt[np.arange(40)].inputs, given[np.arange(40)].inputs, rtol=0, atol=0)


@pytest.mark.parametrize(
    ("theirs", "ours"),
    [
        ({"dtype": "bfloat16"}, {"dtype": "float16"}),  # decoded as float16, -3.078 arrived as 49221
        ({}, {"encoding": "topk", "k": 3}),  # used to be a bare KeyError: 'logits'
    ],
)
def test_items_of_another_dataset_are_refused(tmp_path, teacher, digits_small, views, theirs, ours):
    """Items carry the identity of the dataset that read them; another dataset's ``as_batch`` refuses them instead
    of decoding their stored arrays as other numbers."""
    stores = {}
    for name, params in (("theirs", theirs), ("ours", ours)):
        cache_digits(tmp_path / f"{name}.zarr", teacher, digits_small, views, [build_target("logits", params)])
        stores[name] = CachedDataset(digits_small, open_store(tmp_path / f"{name}.zarr"), views=views)
    items = next(iter(DataLoader(stores["theirs"], batch_size=8, sampler=BlockShuffleSampler(stores["theirs"]))))
    assert items["source"].shape == (8, 2)
    with pytest.raises(
        ForeignItemsError,
        match=r"carry stored targets of another dataset .* not those of this "
        r"CachedDataset of store '.*ours\.zarr'",
    ):
        stores["ours"].as_batch(items)
    own = stores["theirs"].as_batch(items).to("cpu")  # the dataset that made them takes them
    reference = stores["theirs"][own.indices.numpy()].to("cpu")
    torch.testing.assert_close(own.targets, reference.targets, rtol=0, atol=0)


def test_items_without_targets_are_refused_by_a_cached_dataset(store, digits_small, views):
    train = CachedDataset(digits_small, open_store(store), views=views)
    items = next(iter(DataLoader(train, batch_size=4, sampler=BlockShuffleSampler(train))))
    del items["source"], items["targets"]  # what a plain dataset's items look like
    with pytest.raises(ForeignItemsError, match="these items carry no stored targets"):
        train.as_batch(items)
