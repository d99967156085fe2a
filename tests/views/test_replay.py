"""Augmentation replay end to end: what stage two feeds the student is, bit for bit, what stage one fed the teacher.

The proof uses an *echo teacher* (``nn.Flatten``): its float32 "logits" are its input pixels, so the store records
exactly the teacher-side input of every (sample, view). Stage one runs in a spawned process (another run); stage two
reads through DataLoader workers started with ``spawn``; each batch's inputs must equal the cached echo bitwise.
"""

from __future__ import annotations

import multiprocessing
from pathlib import Path

import numpy as np
import pytest
import torch
import zarr
from torch import nn

from kdcache.errors import ConfigError, StoreMismatchError
from kdcache.precompute import precompute
from kdcache.store import open_store, read_manifest
from kdcache.store.location import StoreLocation
from kdcache.targets import build_target
from kdcache.train import CachedDataset, ViewDataset, batch_loader, set_loader_epoch
from tests.conftest import DIGITS
from tests.helpers import Interrupting, store_files
from tests.views.test_views import transform

VIEWS = 4


def build_echo_store(path: str, *, dataset=None, batch_size: int = 64) -> None:
    """Stage one with the echo teacher over the first 300 digits, 4 views of every op (module level: spawnable)."""
    from kdcache.datasets import HDF5Dataset, Subset

    dataset = dataset or Subset(HDF5Dataset(DIGITS, "train"), np.arange(300), tag="first-300")
    precompute(
        nn.Flatten(),
        dataset,
        path,
        targets=[build_target("logits", {"dtype": "float32"})],
        views=transform(count=VIEWS),
        teacher_name="echo",  # num_classes is read from the teacher: 64 "classes", its input pixels
        shard_samples=128,
        batch_size=batch_size,
        progress=False,
    )


@pytest.fixture(scope="module")
def echo_store(tmp_path_factory) -> str:
    path = str(tmp_path_factory.mktemp("echo") / "train.zarr")
    process = multiprocessing.get_context("spawn").Process(target=build_echo_store, args=(path,))
    process.start()
    process.join(timeout=300)
    assert process.exitcode == 0
    return path


def as_bits(x: torch.Tensor) -> np.ndarray:
    return x.contiguous().numpy().view(np.uint32)


def test_student_inputs_equal_teacher_inputs_bitwise_across_spawned_workers(echo_store, digits_small):
    data = CachedDataset(
        digits_small,
        open_store(echo_store),
        teacher="echo",
        targets=["logits"],
        views=transform(count=VIEWS),
        policy="random",
    )
    loader = batch_loader(data, batch_size=50, seed=0, num_workers=2, multiprocessing_context="spawn")
    set_loader_epoch(loader, 1)
    seen_views, count = [], 0
    for batch in loader:
        batch = batch.to("cpu")
        np.testing.assert_array_equal(as_bits(batch.inputs.flatten(1)), as_bits(batch.targets["logits"]))
        seen_views.append(batch.views.numpy())
        count += len(batch.indices)
    assert count == 300 and set(np.concatenate(seen_views)) == set(range(VIEWS))
    # the same pairs made in this process, alone and in another batch order, give the same bits again
    indices = np.array([299, 0, 131, 7])
    one_by_one = torch.cat([data[np.array([i])].inputs for i in indices])
    np.testing.assert_array_equal(as_bits(one_by_one), as_bits(data[indices].inputs))


def test_stored_parameters_are_the_regenerated_ones(echo_store, digits_small):
    group = zarr.open_group(echo_store, mode="r")
    stored = group["views/params"][:]
    views = transform(count=VIEWS)
    assert stored.shape == (300, VIEWS, len(views.param_names)) and stored.dtype == np.float32
    samples, view_ids = np.repeat(np.arange(300), VIEWS), np.tile(np.arange(VIEWS), 300)
    np.testing.assert_array_equal(stored.reshape(-1, stored.shape[-1]), views.params(samples, view_ids, (8, 8)))
    manifest = read_manifest(StoreLocation(echo_store))
    assert manifest.views["transform"]["params"] == views.param_names
    assert "views/params" in manifest.samples.arrays  # owned by the samples owner, committed with it
    assert all("views/params" in c.files for c in manifest.samples.shards)


def test_cycle_visits_every_cached_view_and_fresh_never_repeats(digits_small):
    views = transform(count=VIEWS)
    cycle, fresh = ViewDataset(digits_small, views, policy="cycle"), ViewDataset(digits_small, views, policy="fresh")
    idx = np.arange(6)
    cycled, fresh_ids = [], []
    for epoch in range(8):
        cycle.set_epoch(epoch)
        fresh.set_epoch(epoch)
        cycled.append(cycle.view_ids(idx))
        fresh_ids.append(fresh.view_ids(idx))
    assert all(sorted(np.stack(cycled)[:VIEWS, j]) == list(range(VIEWS)) for j in range(6))
    assert np.stack(fresh_ids)[:, 0].tolist() == list(range(1, 9))  # a new augmented view every epoch


def test_a_cache_refuses_fresh_views_other_view_specs_and_drifted_parameters(echo_store, digits_small):
    cache = open_store(echo_store)
    with pytest.raises(ConfigError, match=r"policy 'fresh' draws views a cache does not hold"):
        CachedDataset(digits_small, cache, teacher="echo", targets=["logits"], views=transform(count=4), policy="fresh")
    with pytest.raises(StoreMismatchError, match=r"cached with other views: count: store 4, now 8\. Pass") as raised:
        CachedDataset(digits_small, cache, teacher="echo", targets=["logits"], views=transform(count=8))
    assert "views= in Python" in str(raised.value)  # a Python caller is told the parameter, not only the YAML key

    class Drifted(type(transform())):
        """Same spec, but one number drawn differently: what another RNG or transform code would do."""

        def params(self, indices, view_ids, size, num_samples=None):
            out = super().params(indices, view_ids, size, num_samples)
            out[:, 6] += (np.asarray(view_ids) == 2).astype(np.float32)
            return out

    drifted = Drifted(
        count=VIEWS, seed=3, mean=transform().mean.flatten().tolist(), std=[0.3761], augment=transform().augment
    )
    data = CachedDataset(digits_small, cache, teacher="echo", targets=["logits"], views=drifted)
    data[np.array([1, 3, 4])]  # epoch 0, cycle: views 1, 3, 0, whose numbers did not drift
    with pytest.raises(StoreMismatchError, match=r"pairs \[\(1, 2\)\] replay with other numbers than stage one"):
        data.set_epoch(1)
        data[np.array([1])]


def test_an_interrupted_views_store_resumes_to_identical_bytes(tmp_path, digits_small):
    reference, resumed = tmp_path / "reference.zarr", tmp_path / "resumed.zarr"
    build_echo_store(str(reference), dataset=digits_small, batch_size=16)
    with pytest.raises(KeyboardInterrupt):
        build_echo_store(str(resumed), dataset=Interrupting(digits_small, 192), batch_size=16)
    build_echo_store(str(resumed), dataset=digits_small, batch_size=16)
    assert store_files(Path(resumed)) == store_files(Path(reference))
    assert "views/params/zarr.json" in store_files(Path(resumed))
