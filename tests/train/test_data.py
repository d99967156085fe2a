"""Stage two pairs inputs with targets by sample index, whatever the order of the batch."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from kdcache.store import open_store
from kdcache.train import CachedDataset, batch_loader, set_loader_epoch
from kdcache.train.sampler import EpochBatchSampler, block_shuffle
from tests.conftest import cache_digits, cached_dataset


@pytest.fixture
def cached(tmp_path, teacher, digits_small, views, logits_target) -> CachedDataset:
    cache_digits(tmp_path / "s.zarr", teacher, digits_small, views, [logits_target])
    return cached_dataset(tmp_path / "s.zarr", digits_small, views, ["logits"])


def test_targets_follow_sample_indices_not_batch_positions(cached, teacher):
    order = np.array([17, 3, 250, 3, 129])
    batch = cached[order].to("cpu")
    with torch.no_grad():
        expected = teacher(batch.inputs)
    np.testing.assert_array_equal(batch.indices.numpy(), order)
    torch.testing.assert_close(batch.targets["logits"], expected.half().float())
    assert batch.labels.tolist() == cached.dataset.all_labels()[order].tolist()


def test_loader_covers_each_sample_once_per_epoch_in_a_seeded_order(cached):
    loader = batch_loader(cached, batch_size=64, seed=3)
    seen = []
    for epoch in range(2):
        set_loader_epoch(loader, epoch)
        indices = np.concatenate([b.indices.numpy() for b in loader])
        assert sorted(indices.tolist()) == list(range(300))
        seen.append(indices)
    assert not np.array_equal(seen[0], seen[1])
    set_loader_epoch(loader, 0)
    np.testing.assert_array_equal(np.concatenate([b.indices.numpy() for b in loader]), seen[0])


def test_streamed_dataset_uses_chunk_blocks_and_returns_the_same_targets(tmp_path, cached, digits_small, views):
    streamed = CachedDataset(
        digits_small,
        open_store(cached.readers["logits"]["logits"].location.url),
        teacher="t8",
        targets=["logits"],
        views=views,
        ram_budget_bytes=0,
    )
    assert not streamed.readers["logits"]["logits"].in_memory
    order = np.arange(300)[::-1]
    torch.testing.assert_close(streamed[order].to("cpu").targets, cached[order].to("cpu").targets)


@pytest.mark.parametrize("block", [1, 16, 128], ids=["uniform", "block16", "block128"])
def test_block_shuffle_is_a_deterministic_permutation(block):
    a = block_shuffle(1000, seed=1, epoch=2, block=block)
    assert sorted(a.tolist()) == list(range(1000))
    np.testing.assert_array_equal(a, block_shuffle(1000, seed=1, epoch=2, block=block))
    assert not np.array_equal(a, block_shuffle(1000, seed=1, epoch=3, block=block))


def test_block_shuffle_keeps_reads_within_a_window_of_chunks():
    order = block_shuffle(1024, seed=0, epoch=0, block=32, window=4)
    for w in range(0, 1024, 128):  # each window of 4 chunks x 32 samples touches exactly 4 chunks
        assert len(np.unique(order[w : w + 128] // 32)) == 4


def test_sampler_batches_cover_the_epoch():
    sampler = EpochBatchSampler(10, 4, seed=0)
    batches = list(sampler)
    assert [len(b) for b in batches] == [4, 4, 2] and len(sampler) == 3


def test_the_api_checks_what_the_cli_checks(tmp_path, cached, teacher, digits_small, views):
    """Class count and (given its checkpoint) the teacher's weights are refused through the API as through the CLI."""
    from kdcache.checkpoint import save_model
    from kdcache.errors import StoreMismatchError

    url = cached.readers["logits"]["logits"].location.url
    path = save_model(teacher, tmp_path / "teacher.safetensors", spec={})
    CachedDataset(
        digits_small,
        open_store(url),
        teacher="t8",
        targets=["logits"],
        views=views,
        num_classes=10,
        teacher_checkpoint=path,
    )
    with pytest.raises(StoreMismatchError, match=r"has 10 classes, but the student is trained for 12"):
        CachedDataset(digits_small, open_store(url), teacher="t8", targets=["logits"], views=views, num_classes=12)
    with torch.no_grad():
        teacher.fc.bias += 1
    other = save_model(teacher, tmp_path / "other.safetensors", spec={})
    with pytest.raises(StoreMismatchError, match=r"weights: the checkpoint hashes to"):
        CachedDataset(
            digits_small, open_store(url), teacher="t8", targets=["logits"], views=views, teacher_checkpoint=other
        )
