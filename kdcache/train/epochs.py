"""The epoch travels with each index: which view a sample gets is decided where the sample is read.

A DataLoader copies the dataset into its workers: with ``persistent_workers=True`` the copies live across epochs and
never see the main process's ``set_epoch``; with a plain ``shuffle=True`` nobody calls ``set_epoch`` at all. Either
way a multi-view cache silently degrades to one fixed view per sample. So kdcache's samplers hand the epoch out with
every index — :class:`EpochIndex` (an ``int`` that knows its epoch) from
:class:`~kdcache.train.sampler.BlockShuffleSampler`, :class:`EpochBatch` from the batch sampler of
:func:`~kdcache.train.batch_loader` — and the dataset uses that epoch, whatever process it runs in.

Indices that carry no epoch (a plain ``shuffle=True``, the user's own sampler) are served at the dataset's own epoch
(``set_epoch``) under :class:`EpochGuard`, which refuses them where the epoch cannot be known to be right: in a
DataLoader worker of a dataset whose ``set_epoch`` was never called, and wherever one copy of the dataset is asked for
the same sample twice at one epoch (the sign of an epoch that did not arrive).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, get_args

import numpy as np
import torch
from torch.utils.data import get_worker_info

from kdcache.errors import ConfigError
from kdcache.train.seeded import keyed_integers
from kdcache.views import Views

ViewPolicy = Literal["cycle", "random", "fresh"]
"""How stage two picks each sample's view per epoch (:class:`~kdcache.train.ViewDataset`); not part of the view spec."""
POLICIES: tuple[ViewPolicy, ...] = get_args(ViewPolicy)
FIX = (
    "Give the loader kdcache's sampler, which hands each index its epoch: DataLoader(train, batch_size=B, "
    "sampler=BlockShuffleSampler(train, seed=S)) and sampler.set_epoch(epoch) before each epoch, or "
    "batch_loader(train, ...); or, with shuffle=True and persistent_workers=False, call train.set_epoch(epoch) "
    "before each epoch"
)


class EpochIndex(int):
    """A sample index that carries the epoch it was drawn for (what kdcache's per-sample sampler yields).

    >>> index = EpochIndex(7, epoch=2)
    >>> int(index), index.epoch
    (7, 2)
    """

    epoch: int

    def __new__(cls, index: int, epoch: int) -> EpochIndex:
        made = super().__new__(cls, index)
        made.epoch = int(epoch)
        return made

    def __reduce__(self) -> tuple[type, tuple[int, int]]:  # into DataLoader workers with its epoch
        return (EpochIndex, (int(self), self.epoch))


@dataclass(frozen=True)
class EpochBatch:
    """A batch of sample indices and the epoch they were drawn for (what :func:`batch_loader`'s sampler yields)."""

    indices: np.ndarray
    epoch: int


def view_ids_for(views: Views, policy: ViewPolicy, indices: np.ndarray, epoch: int) -> np.ndarray:
    """The view each sample gets in ``epoch`` under ``policy`` (see :class:`~kdcache.train.ViewDataset`)."""
    count = views.count
    if policy == "fresh":
        return np.full(len(indices), 1 + epoch, dtype=np.int64)
    if count == 1:
        return np.zeros(len(indices), dtype=np.int64)
    if policy == "cycle":
        return (indices + epoch) % count
    return keyed_integers(views.seed, epoch, indices, count)  # default_rng([seed, epoch, i]).integers(count), batched


class EpochGuard:
    """Refuses indices without an epoch where the dataset's own epoch may be stale (see the module docstring).

    Its record lives in shared memory, so every copy of the dataset — DataLoader workers of every epoch, persistent
    or not — sees what the others served: ``state[0]`` is the epoch the main process set last, ``state[1 + i]`` one
    more than the epoch sample ``i`` was last served at."""

    def __init__(self, num_samples: int, *, varies: bool) -> None:
        self.varies = varies  # whether the epoch decides any sample's view (several views, or fresh ones)
        self.known = False  # set_epoch was called on this copy (or on the dataset it was copied from)
        self.state = torch.zeros(num_samples + 1 if varies else 1, dtype=torch.int64).share_memory_()

    def set_epoch(self, epoch: int) -> None:
        self.known = True
        self.state[0] = epoch

    def check(self, indices: np.ndarray, epoch: int, *, per_item: bool) -> None:
        """Refuse ``indices`` (read at the dataset's own ``epoch``) when that epoch cannot be trusted."""
        worker = get_worker_info() is not None
        if not self.varies or not (worker or per_item):
            return
        if worker and not self.known:
            raise ConfigError(
                "a DataLoader worker was asked for samples without their epoch, and set_epoch was never called on "
                "this dataset: every epoch would train on the same view of each sample. " + FIX
            )
        if self.known and int(self.state[0]) != epoch:
            raise ConfigError(
                f"this copy of the dataset reads at epoch {epoch} but set_epoch({int(self.state[0])}) was called "
                "since: the DataLoader keeps persistent workers, whose copies never see set_epoch, so they would "
                f"repeat epoch {epoch}'s views. {FIX}"
            )
        marks = self.state[1:].numpy()
        again = indices[marks[indices] == epoch + 1]
        if len(again):
            raise ConfigError(
                f"sample {int(again[0])} was asked for twice at epoch {epoch}: set_epoch was not called between "
                f"two epochs, so later epochs would repeat epoch {epoch}'s views. {FIX}"
            )
        marks[indices] = epoch + 1
