"""A store's shard is no larger than its data needs: one shard size per store, chunks that divide it, little padding."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from kdcache import ViewTransform, build_target, precompute
from kdcache.datasets import TensorDataset
from kdcache.store import open_store, plan_shard_samples
from kdcache.store.layout import ArraySpec

LOGITS_40 = 40 * 2  # fp16 logits of 40 classes: 80 bytes per sample


@pytest.mark.parametrize(
    ("widest", "num_samples", "shard"),
    [
        (LOGITS_40, 620, 640),  # one shard: the sample count rounded up to 64, not 1,024
        (LOGITS_40, 40, 64),  # at least 64
        (2000 * 2, 5000, 5120),  # one shard, rounded up to the widest array's 256-sample chunk
        (2000 * 2, 100_000, 8192),  # many shards: ~32 MB of the widest array, a power of two
        (LOGITS_40, 10_000_000, 65_536),  # at most 65,536
    ],
)
def test_shard_sizes(widest, num_samples, shard) -> None:
    assert plan_shard_samples([8, widest], num_samples) == shard
    for width in (1, 8, widest):  # every array's inner chunk divides the shard
        assert shard % ArraySpec("a", (width,), "uint8").chunk_samples(shard) == 0


def test_power_of_two_shards_keep_their_chunks() -> None:
    """A store written before one-shard stores were sized to their data keeps the chunks it recorded."""
    assert [ArraySpec("a", (80,), "uint8").chunk_samples(s) for s in (64, 1024, 16384)] == [64, 1024, 8192]


def test_a_620_sample_store_costs_83_not_132_bytes_per_sample(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    images = torch.from_numpy(rng.random((620, 1, 4, 4))).float()
    data = TensorDataset(images, torch.from_numpy(rng.integers(0, 40, 620)), split="train", source={"kind": "x"})
    teacher = nn.Sequential(nn.Flatten(), nn.Linear(16, 40)).eval()
    precompute(
        teacher,
        data,
        str(tmp_path / "s.zarr"),
        targets=[build_target("logits", {"dtype": "float16"})],
        views=ViewTransform(count=1, seed=0),
        num_classes=40,
        teacher_name="t",
        progress=False,
    )
    cache = open_store(str(tmp_path / "s.zarr"))
    assert cache.manifest.shard_samples == 640
    per_sample = cache.array_bytes("teachers/t/logits") / 620
    assert LOGITS_40 < per_sample < 83  # 640 · 80 B of data and the shard index, over 620 samples: 82.6 B
