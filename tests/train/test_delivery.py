"""In-RAM delivery: a plain DataLoader reads a batch per call (``__getitems__``), batches cross from workers packed in
one buffer, and both give exactly what ``batch_of`` gives, every check included."""

from __future__ import annotations

import pickle
import warnings

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from kdcache.errors import PerformanceWarning
from kdcache.train import batch_loader, set_loader_epoch
from kdcache.train.batch import Batch
from kdcache.train.data import SINGLE_READS_WARNED
from tests.conftest import cache_digits, cached_dataset


@pytest.fixture
def train(tmp_path, teacher, digits_small, views, logits_target):
    cache_digits(tmp_path / "s.zarr", teacher, digits_small, views, [logits_target])
    return cached_dataset(tmp_path / "s.zarr", digits_small, views, ["logits"])


def assert_same(a: Batch, b: Batch) -> None:
    for name in ("inputs", "labels", "indices", "views", "params"):
        x, y = getattr(a, name), getattr(b, name)
        assert x.dtype == y.dtype and torch.equal(x, y), name
    assert a.stored.keys() == b.stored.keys()
    for target, arrays in a.stored.items():
        for key, value in arrays.items():
            assert value.dtype == b.stored[target][key].dtype and torch.equal(value, b.stored[target][key])


def test_a_plain_dataloader_reads_each_batch_in_one_call(train):
    loader = DataLoader(train, batch_size=64, shuffle=True, generator=torch.Generator().manual_seed(0))
    seen = []
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # batches read in one call: no per-sample warning
        for items in loader:
            batch = train.as_batch(items)
            assert_same(batch, train.batch_of(batch.indices.numpy()))
            seen.append(batch.indices.numpy())
    assert sorted(np.concatenate(seen).tolist()) == list(range(len(train)))
    assert train._single_reads == 0
    decoded = batch.to("cpu").targets["logits"]
    assert decoded.shape == (len(batch.indices), 10) and decoded.dtype == torch.float32


def test_reading_one_index_per_call_many_times_warns_once(train):
    with pytest.warns(PerformanceWarning, match="one sample per call") as caught:
        for i in range(SINGLE_READS_WARNED + 5):
            item = train[i % len(train)]
    assert len([w for w in caught if issubclass(w.category, PerformanceWarning)]) == 1
    assert int(item["index"]) == (SINGLE_READS_WARNED + 4) % len(train)


def test_batches_from_workers_equal_batches_read_in_process(train):
    loaders = {n: batch_loader(train, batch_size=50, seed=3, num_workers=n) for n in (0, 2)}
    for loader in loaders.values():
        set_loader_epoch(loader, 1)
    for alone, from_worker in zip(*loaders.values(), strict=True):
        assert_same(alone, from_worker)
        assert torch.equal(alone.source, from_worker.source) and from_worker.decoders.keys() == {"logits"}
        torch.testing.assert_close(alone.to("cpu").targets, from_worker.to("cpu").targets, rtol=0, atol=0)


def test_a_pickled_batch_comes_back_packed_with_the_same_tensors(train):
    batch = train.batch_of(np.array([5, 0, 17, 3]))
    again = pickle.loads(pickle.dumps(batch))
    assert_same(batch, again)
    storage = again.inputs.untyped_storage().data_ptr()
    assert all(t.untyped_storage().data_ptr() == storage for t in (again.labels, again.indices, again.views))
    moved = batch.to("cpu")  # decoded targets travel as they are
    assert torch.equal(pickle.loads(pickle.dumps(moved)).targets["logits"], moved.targets["logits"])
