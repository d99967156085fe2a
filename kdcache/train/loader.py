"""The DataLoader of stage two: one batch of sample indices per call, in the epoch order of the sampler.

The dataset is indexed by a whole batch (``batch_size=None`` plus a batch sampler), so targets are read a batch at a
time in one call per array; streamed stores are visited in blocks of whole chunks (:mod:`kdcache.train.sampler`).
"""

from __future__ import annotations

from typing import Any

from torch.utils.data import DataLoader

from kdcache.errors import ConfigError
from kdcache.train.data import ViewDataset
from kdcache.train.sampler import EpochBatchSampler
from kdcache.train.world import World


def batch_loader(
    dataset: ViewDataset,
    *,
    batch_size: int,
    seed: int = 0,
    shuffle: bool = True,
    num_workers: int = 0,
    pin_memory: bool = False,
    world: World | None = None,
    multiprocessing_context: str | None = None,
) -> DataLoader:
    """A DataLoader that hands ``dataset`` one batch of indices per call (``batch_size=None`` + a batch sampler).

    ``batch_size`` is the global batch: with ``world`` (several processes) each rank gets its part of every global
    batch (:class:`~kdcache.train.sampler.EpochBatchSampler`), so the samples of each step do not depend on the number of
    processes. ``multiprocessing_context`` (``"spawn"``, ``"forkserver"``, ``"fork"``) starts the workers that way;
    views are a pure function of (seed, sample, view), so every start method gives the same batches.
    """
    sampler = EpochBatchSampler(
        len(dataset), batch_size, seed=seed, shuffle=shuffle, block=dataset.read_block(), world=world, with_epoch=True
    )
    sampler.views_vary = dataset.guard.varies
    return DataLoader(
        dataset,
        sampler=sampler,
        batch_size=None,
        num_workers=num_workers,
        pin_memory=pin_memory,
        collate_fn=_identity,
        multiprocessing_context=multiprocessing_context if num_workers > 0 else None,
    )


def set_loader_epoch(loader: DataLoader, epoch: int, *, start_step: int = 0) -> None:
    """Select epoch ``epoch``'s order and views (call before iterating the loader); iteration begins at global batch
    ``start_step`` (a resumed epoch)."""
    sampler, dataset = loader.sampler, loader.dataset
    if not isinstance(sampler, EpochBatchSampler) or not isinstance(dataset, ViewDataset):
        raise ConfigError(
            f"set_loader_epoch takes a loader made by batch_loader (its sampler is a {type(sampler).__name__}, its "
            f"dataset a {type(dataset).__name__}); for a DataLoader of your own, call dataset.set_epoch(epoch) and "
            "draw the order with your sampler"
        )
    sampler.set_epoch(epoch, start_step=start_step)
    dataset.set_epoch(epoch)


def _identity(batch: Any) -> Any:  # batch_size=None: the loader hands over each Batch as it is
    return batch
