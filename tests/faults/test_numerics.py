"""Numerics: NaN/Inf teacher outputs and values beyond float16 are refused with the sample indices before anything
is committed; all-zero feature chunks are stored and read back as zeros, not as missing."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from kdcache.errors import NonFiniteTargetError, TargetOverflowError
from kdcache.precompute import precompute
from kdcache.store import open_store, read_manifest, scrub
from kdcache.store.location import StoreLocation
from kdcache.targets import build_target
from kdcache.train import CachedDataset
from tests.faults.ledger import Outcome, clear_error, record


class Poisoned(torch.nn.Module):
    """The suite's teacher, with ``value`` written into the logits of chosen samples (found by their first pixel)."""

    def __init__(self, teacher: torch.nn.Module, marks: torch.Tensor, value: float) -> None:
        super().__init__()
        self.teacher, self.marks, self.value = teacher, marks, value

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.teacher(x)
        hit = (x.flatten(1)[:, None, :] == self.marks[None]).all(-1).any(-1)
        out[hit, 3] = self.value
        return out


@pytest.mark.parametrize(("value", "error", "seed"), [(float("nan"), NonFiniteTargetError, s) for s in range(2)]
                         + [(float("inf"), NonFiniteTargetError, 2), (-float("inf"), NonFiniteTargetError, 3),
                            (1e6, TargetOverflowError, 4)])  # fmt: skip
def test_bad_values_are_refused_naming_the_samples(tmp_path, teacher, digits_small, views, value, error, seed):
    chosen = np.sort(np.random.default_rng(seed).choice(len(digits_small), size=3, replace=False))
    raw, _ = digits_small.get_batch(chosen)
    poisoned = Poisoned(teacher, views(raw, None, None).flatten(1), value)
    store = tmp_path / "store.zarr"
    outcome = Outcome("numerics", f"{value}-at-{chosen.tolist()}")
    with pytest.raises(error) as raised:
        precompute(poisoned, digits_small, store, targets=[build_target("logits", {})], views=views, num_classes=10,
                   shard_samples=64, progress=False)  # fmt: skip
    first_bad_shard = chosen[0] // 64
    outcome.detected = clear_error(raised.value, str(int(chosen[chosen // 64 == first_bad_shard][0])))
    manifest = read_manifest(StoreLocation(store))
    committed = [c.index for c in manifest.teachers["teacher"].shards]
    outcome.silent_wrong = any(k >= first_bad_shard for k in committed)  # nothing at or after the bad batch
    assert record(outcome).passed, (outcome, str(raised.value), committed)


class ZeroLayer(torch.nn.Module):
    """A teacher whose ``dead`` layer outputs exact zeros (a dead ReLU block)."""

    def __init__(self, teacher: torch.nn.Module) -> None:
        super().__init__()
        self.teacher = teacher
        self.dead = torch.nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.dead(-torch.ones(len(x), 4, 2, 2))
        return self.teacher(x)


@pytest.mark.parametrize("compressor", ["none", "zstd"])
def test_all_zero_feature_chunks_read_back_as_zeros(tmp_path, teacher, digits_small, views, compressor):
    store = tmp_path / "store.zarr"
    target = build_target("features", {"layer": "dead", "compressor": compressor})
    precompute(ZeroLayer(teacher), digits_small, store, targets=[target], views=views, num_classes=10,
               shard_samples=64, progress=False)  # fmt: skip
    data = CachedDataset(
        digits_small, open_store(str(store)), teacher="teacher", targets=["features/dead"], views=views
    )
    values = data[np.arange(len(digits_small))].to("cpu").targets["features/dead"]
    outcome = Outcome("numerics", f"all-zero-features-{compressor}")
    outcome.recovered = bool((values == 0).all()) and values.shape == (300, 4, 2, 2) and scrub(str(store)) == []
    outcome.silent_wrong = bool(torch.isnan(values).any())
    assert record(outcome).passed, outcome
