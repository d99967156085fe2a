"""The epoch order is cut into global batches that every world size shares; ranks take disjoint parts of each."""

from __future__ import annotations

from collections import OrderedDict

import numpy as np
import pytest

from kdcache.errors import CheckpointError, ConfigError
from kdcache.train.sampler import EpochBatchSampler, rank_part, steps_per_epoch
from kdcache.train.world import World


def samplers(num_samples: int, batch_size: int, world_size: int, **kw) -> list[EpochBatchSampler]:
    return [
        EpochBatchSampler(num_samples, batch_size, seed=7, world=World(r, world_size, r), **kw)
        for r in range(world_size)
    ]


def steps(ranks: list[EpochBatchSampler], epoch: int, start: int = 0) -> list[list[np.ndarray]]:
    """Per step, the batch of every rank."""
    for s in ranks:
        s.set_epoch(epoch, start_step=start)
    return [list(batches) for batches in zip(*(list(s) for s in ranks), strict=True)]


@pytest.mark.parametrize("block", [1, 32], ids=["in-ram", "streamed"])
@pytest.mark.parametrize("world_size", [1, 2, 3])
def test_ranks_split_the_same_global_batches_disjointly(world_size, block):
    single = samplers(300, 60, 1, block=block)[0]
    single.set_epoch(2)
    for step, parts in enumerate(steps(samplers(300, 60, world_size, block=block), epoch=2)):
        assert [len(p) for p in parts] == [60 // world_size] * world_size
        merged = np.concatenate(parts)
        assert len(np.unique(merged)) == 60  # disjoint
        assert sorted(merged.tolist()) == sorted(single.global_batch(step).tolist())  # same samples as 1 process
    every = np.concatenate([np.concatenate(p) for p in steps(samplers(300, 60, world_size, block=block), epoch=2)])
    assert sorted(every.tolist()) == list(range(300))


@pytest.mark.parametrize(
    ("num_samples", "world_size", "tail_parts"),
    [(305, 2, [3, 2]), (301, 2, []), (301, 1, [1]), (303, 4, []), (305, 4, [2, 1, 1, 1])],
    ids=["split-unequal", "dropped-1-of-2", "kept-by-1-process", "dropped-3-of-4", "split-4"],
)
def test_the_tail_is_split_or_dropped_never_padded(num_samples, world_size, tail_parts):
    ranks = samplers(num_samples, 60, world_size)
    batches = steps(ranks, epoch=0)
    full = num_samples // 60
    assert len(batches) == len(ranks[0]) == steps_per_epoch(num_samples, 60, world_size) == full + bool(tail_parts)
    if tail_parts:
        assert [len(p) for p in batches[-1]] == tail_parts
        assert ranks[0].global_size(full) == sum(tail_parts)
    seen = np.concatenate([np.concatenate(parts) for parts in batches])
    assert len(seen) == len(np.unique(seen))  # no sample twice
    dropped = num_samples - len(seen)
    assert dropped == (0 if tail_parts else num_samples % 60) and dropped < world_size


def test_a_global_batch_must_divide_among_the_ranks():
    with pytest.raises(ConfigError, match=r"batch size 64 .* divisible .* multiple of 3 \(e\.g\. 66\)"):
        EpochBatchSampler(300, 64, seed=0, world=World(0, 3, 0))


@pytest.mark.parametrize(("before", "after"), [(2, 2), (2, 3), (3, 1), (1, 2)], ids=["2to2", "2to3", "3to1", "1to2"])
def test_resume_continues_the_epoch_on_any_world_size(before, after):
    """A checkpoint after 2 global batches: the resumed ranks train exactly the rest of the epoch."""
    old = samplers(300, 60, before, block=32)
    done = np.concatenate([np.concatenate(parts) for parts in steps(old, epoch=4)[:2]])
    state = old[0].state(2)
    assert state == {
        "epoch": 4,
        "step": 2,
        "seed": 7,
        "num_samples": 300,
        "batch_size": 60,
        "block": 32,
        "shuffle": True,
        "world_size": before,
    }
    new = samplers(300, 60, after, block=32)
    for s in new:
        s.resume(state)
    rest = np.concatenate([np.concatenate(parts) for parts in steps(new, epoch=4, start=2)])
    assert len(done) == 120 and len(rest) == 180
    assert sorted(np.concatenate([done, rest]).tolist()) == list(range(300))  # 0 missing, 0 repeated


def test_a_finished_epoch_is_recorded_as_the_start_of_the_next():
    (s,) = samplers(300, 60, 1)
    s.set_epoch(3)
    assert (s.state(5)["epoch"], s.state(5)["step"]) == (4, 0)


@pytest.mark.parametrize(
    ("change", "text"),
    [({"seed": 8}, "seed: checkpoint 8, now 7"), ({"batch_size": 30}, "batch_size: checkpoint 30, now 60")],
    ids=["seed", "batch"],
)
def test_resume_refuses_an_order_it_cannot_reproduce(change, text):
    (s,) = samplers(300, 60, 1)
    with pytest.raises(CheckpointError, match=text):
        s.resume({**s.state(1), **change})


def chunk_reads(ranks: list[EpochBatchSampler], chunk: int, *, by_index: bool) -> int:
    """Inner chunks the ranks read in one epoch through a cache of 8 chunks (a window)."""
    total = 0
    for s in ranks:
        s.set_epoch(0)
        cache: OrderedDict[int, None] = OrderedDict()
        for step in range(len(s)):
            for c in np.unique(rank_part(s.global_batch(step), s.world, by_index=by_index) // chunk):
                if c in cache:
                    cache.move_to_end(c)
                    continue
                total += 1
                cache[c] = None
                if len(cache) > 8:
                    cache.popitem(last=False)
    return total


@pytest.mark.parametrize(("world_size", "sorted_reads"), [(2, 40), (4, 56)])
def test_streamed_parts_follow_the_chunks(world_size, sorted_reads):
    """32 chunks of 32 samples: sorting each global batch before splitting it cuts the chunks every rank reads
    from all of each window (W x 32 reads) to about window / W + 1 per window."""
    ranks = samplers(1024, 64, world_size, block=32)
    assert chunk_reads(ranks, 32, by_index=False) == world_size * 32
    assert chunk_reads(ranks, 32, by_index=True) == sorted_reads


def test_set_loader_epoch_refuses_a_loader_batch_loader_did_not_make():
    from torch.utils.data import DataLoader

    from kdcache.train import set_loader_epoch

    with pytest.raises(ConfigError, match=r"takes a loader made by batch_loader \(its sampler is a SequentialSampler"):
        set_loader_epoch(DataLoader(list(range(4))), 0)
