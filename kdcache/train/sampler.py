"""Which samples each process trains on at each step: a deterministic epoch order cut into global batches.

The order of epoch ``e`` is a pure function of ``(seed, e)``: a uniform permutation when targets are in RAM, a block
shuffle when they are streamed (:func:`block_shuffle`). It is cut into *global batches* of ``batch_size`` samples;
step ``s`` trains on global batch ``s`` and each of the ``W`` ranks takes one part of it (``batch_size / W``
samples). The samples of every step, the number of steps per epoch and so the learning-rate schedule are the same
for any number of processes; that is what lets a run resume on a different number of processes.

* **Parts.** With targets in RAM a rank takes a contiguous slice of the (random) global batch. With streamed targets
  the global batch is first sorted by sample index, so each rank's part covers a narrow range of the store's inner
  chunks and each rank reads about ``window / W + 1`` chunks of every window instead of all of them.
* **Tail.** The last global batch holds ``t = N mod batch_size`` samples. It is split into near-equal parts (sizes
  differ by at most one; :func:`kdcache.train.fit` weights each rank's loss by its share so the gradient is still the
  mean over the global batch). It is never padded with repeated samples. When ``t < W`` some rank would get nothing
  to train on, so those ``t`` samples are dropped for that epoch: at most ``W - 1`` samples, a different set every
  epoch; a single process never drops any.
* **Resume.** :meth:`EpochBatchSampler.state` is ``(epoch, step, seed, num_samples, batch_size, block, shuffle,
  world_size)``. :meth:`EpochBatchSampler.resume` restarts at that step: the global batches already trained on are
  skipped and the rest of the epoch is split across however many ranks there are now.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from typing import Any

import numpy as np
from torch.utils.data import Sampler

from kdcache.errors import CheckpointError, ConfigError, say
from kdcache.train.epochs import EpochBatch, EpochIndex
from kdcache.train.world import World

log = logging.getLogger(__name__)

#: The sampler facts a resumed run must share with the run that wrote the checkpoint (world_size may differ).
PINNED = ("seed", "num_samples", "batch_size", "block", "shuffle")


def block_shuffle(num_samples: int, *, seed: int, epoch: int, block: int = 1, window: int = 8) -> np.ndarray:
    """A permutation of ``range(num_samples)`` that is a pure function of (seed, epoch).

    Blocks of ``block`` consecutive samples (a store's inner chunk) are visited in shuffled order, ``window`` blocks
    at a time, and samples are shuffled within each window: reads stay chunk-sequential, order stays random enough.
    With ``block=1`` it is a plain uniform permutation (right when targets are in RAM).
    """
    rng = np.random.default_rng([seed, epoch])
    if block <= 1:
        return rng.permutation(num_samples)
    starts = rng.permutation(np.arange(0, num_samples, block))
    order = []
    for w in range(0, len(starts), window):
        members = np.concatenate([np.arange(s, min(s + block, num_samples)) for s in starts[w : w + window]])
        order.append(rng.permutation(members))
    return np.concatenate(order) if order else np.arange(0)


def steps_per_epoch(num_samples: int, batch_size: int, world_size: int = 1) -> int:
    """Global batches per epoch: the full ones, plus the tail when every rank gets at least one of its samples."""
    full, tail = divmod(num_samples, batch_size)
    return full + int(tail >= world_size)


def rank_part(global_batch: np.ndarray, world: World, *, by_index: bool = False) -> np.ndarray:
    """This rank's part of a global batch: near-equal contiguous parts, of the batch sorted by sample index when
    ``by_index`` (streamed targets: each rank then touches as few chunks as possible)."""
    members = np.sort(global_batch) if by_index else global_batch
    return np.array_split(members, world.world_size)[world.rank]


class EpochBatchSampler(Sampler[np.ndarray | EpochBatch]):
    """This rank's batches of sample indices for one epoch at a time; ``set_epoch`` selects the epoch. With
    ``with_epoch`` each batch is an :class:`~kdcache.train.epochs.EpochBatch`, so the epoch reaches every worker.

    ``batch_size`` is the global batch (all ranks together) and must be divisible by the number of ranks.
    """

    def __init__(
        self,
        num_samples: int,
        batch_size: int,
        *,
        seed: int,
        shuffle: bool = True,
        block: int = 1,
        world: World | None = None,
        with_epoch: bool = False,
    ) -> None:
        self.world = world or World()
        self.with_epoch = with_epoch  # yield EpochBatch (indices + epoch), as batch_loader's DataLoader needs
        self.views_vary = False  # set by batch_loader when the epoch picks views: a repeated epoch is refused
        self._fresh = True
        if batch_size % self.world.world_size:
            raise ConfigError(
                f"batch size {batch_size} is the global batch of all {self.world.world_size} processes and must be "
                f"divisible by their number; use a multiple of {self.world.world_size} (e.g. "
                f"{batch_size - batch_size % self.world.world_size + self.world.world_size}) or another process count"
            )
        self.num_samples = num_samples
        self.batch_size = batch_size
        self.seed = seed
        self.shuffle = shuffle
        self.block = block
        self.epoch = 0
        self.start_step = 0
        self._order: tuple[int, np.ndarray] | None = None

    def set_epoch(self, epoch: int, *, start_step: int = 0) -> None:
        """Select epoch ``epoch``; iteration starts at global batch ``start_step`` (0: the whole epoch)."""
        self.epoch = epoch
        self.start_step = start_step
        self._fresh = True

    def order(self) -> np.ndarray:
        """The epoch's global sample order (identical on every rank)."""
        if self._order is None or self._order[0] != self.epoch:
            if not self.shuffle:
                order = np.arange(self.num_samples)
            else:
                order = block_shuffle(self.num_samples, seed=self.seed, epoch=self.epoch, block=self.block)
            self._order = (self.epoch, order)
        return self._order[1]

    def global_batch(self, step: int) -> np.ndarray:
        return self.order()[step * self.batch_size : (step + 1) * self.batch_size]

    def global_size(self, step: int) -> int:
        """Samples in global batch ``step`` over all ranks (``batch_size`` except for the tail)."""
        return int(min(self.batch_size, self.num_samples - step * self.batch_size))

    def __iter__(self) -> Iterator[np.ndarray | EpochBatch]:
        _refuse_repeat(self, "set_loader_epoch(loader, epoch)")
        for step in range(self.start_step, len(self)):
            part = rank_part(self.global_batch(step), self.world, by_index=self.block > 1)
            yield EpochBatch(part, self.epoch) if self.with_epoch else part

    def __len__(self) -> int:
        return steps_per_epoch(self.num_samples, self.batch_size, self.world.world_size)

    def state(self, step: int) -> dict[str, Any]:
        """What a checkpoint taken after ``step`` global batches of this epoch records (JSON-able); a finished
        epoch is recorded as step 0 of the next."""
        epoch = self.epoch
        if step >= len(self):
            epoch, step = epoch + 1, 0
        return {
            "epoch": epoch,
            "step": step,
            "seed": self.seed,
            "num_samples": self.num_samples,
            "batch_size": self.batch_size,
            "block": self.block,
            "shuffle": self.shuffle,
            "world_size": self.world.world_size,
        }

    def resume(self, state: dict[str, Any]) -> None:
        """Continue from a checkpoint's sampler ``state``: same epoch order, starting after the global batches it had
        done, split across the ranks there are now. Refuses a state whose order cannot be reproduced."""
        differ = {k: (state.get(k), getattr(self, k)) for k in PINNED if state.get(k) != getattr(self, k)}
        if differ:
            text = ", ".join(f"{k}: checkpoint {old!r}, now {new!r}" for k, (old, new) in differ.items())
            raise CheckpointError(
                f"cannot resume: the checkpoint's sample order was made with other settings ({text}). The epoch "
                "order is a function of these, so the remaining samples could not be identified. Resume with the "
                + say(
                    "original settings (fit(seed=, batch_size=), len(train_data), ram_budget_bytes=) or start a new "
                    "run (resume=False, or a new Checkpointing path)",
                    "original settings (seed, data.max_train_samples, student.train.batch_size, cache.ram_budget_mb) "
                    "or start a new run without --resume",
                )
            )
        if state["world_size"] != self.world.world_size:
            log.info(
                "resuming a %d-process run on %d processes: the rest of epoch %d is re-partitioned",
                state["world_size"],
                self.world.world_size,
                state["epoch"],
            )
        self.set_epoch(int(state["epoch"]), start_step=int(state["step"]))


class BlockShuffleSampler(Sampler[int]):
    """Sample indices one at a time, for a plain ``DataLoader(dataset, batch_size=..., sampler=...)``.

    The order of epoch ``e`` is :func:`block_shuffle` of ``(seed, e)`` with the dataset's read block, so streamed
    targets are read chunk by chunk. Each index is an :class:`~kdcache.train.epochs.EpochIndex` carrying the epoch,
    so the dataset picks that epoch's view in whatever worker reads it (``persistent_workers=True`` included). Call
    :meth:`set_epoch` before each epoch.
    """

    def __init__(self, dataset: Any, *, seed: int = 0, shuffle: bool = True) -> None:
        self.dataset = dataset
        self.seed = seed
        self.shuffle = shuffle
        self.epoch = 0
        self.views_vary = bool(getattr(getattr(dataset, "guard", None), "varies", False))
        self._fresh = True
        dataset.block_sampled = True

    def set_epoch(self, epoch: int) -> None:
        """Select epoch ``epoch``'s order, and its views in the dataset."""
        self.epoch = epoch
        self._fresh = True
        self.dataset.set_epoch(epoch)

    def __iter__(self) -> Iterator[int]:
        _refuse_repeat(self, "sampler.set_epoch(epoch)")
        count = len(self.dataset)
        if not self.shuffle:
            order = np.arange(count)
        else:
            order = block_shuffle(count, seed=self.seed, epoch=self.epoch, block=self.dataset.read_block())
        return (EpochIndex(i, self.epoch) for i in order.tolist())

    def __len__(self) -> int:
        return len(self.dataset)


def _refuse_repeat(sampler: EpochBatchSampler | BlockShuffleSampler, call: str) -> None:
    """A second pass at one epoch of a dataset whose views the epoch picks means the epoch was never advanced: every
    epoch would repeat the first one's views. Refused; an explicit ``set_epoch`` (even to the same epoch) allows it."""
    if sampler.views_vary and not sampler._fresh:
        raise ConfigError(
            f"the sampler was iterated twice at epoch {sampler.epoch} without set_epoch in between, so every epoch "
            f"would train on epoch {sampler.epoch}'s views of each sample. Call {call} before each epoch"
        )
    sampler._fresh = False
