"""Stage two's data path: inputs joined with cached targets by sample index, a batch per call.

``CachedDataset`` is indexed by a *batch* of sample indices (use it with :func:`batch_loader`): the inputs of those
samples are read from the dataset, their targets from the store in one call per array, and the two are paired by
index, never by position in the batch. Targets travel as their stored dtype (float16, int8, ...) through CPU memory
(pinned when the device is CUDA) and are decoded on the training device by :meth:`Batch.to`.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from kdcache.datasets.base import SampleDataset
from kdcache.errors import ConfigError, StoreMismatchError
from kdcache.sampler import EpochBatchSampler
from kdcache.store.layout import SAMPLES_OWNER, VIEW_PARAMS, owner_of_teacher
from kdcache.store.manifest import ArrayRecord, TargetRecord
from kdcache.store.reader import ArrayReader, Cache
from kdcache.targets import Target, build_target
from kdcache.targets.ensemble import Ensemble, EnsembleDecoder
from kdcache.views import ViewTransform
from kdcache.world import World


@dataclass
class Batch:
    """A training batch: model inputs, labels, the sample indices and views they came from, and teacher targets.

    ``params`` holds the numbers each view's augmentation was drawn with, ``(B, P)`` float32 (columns named by
    ``ViewTransform.param_names``; it stays on the CPU). ``targets`` holds stored arrays (by target, then array name)
    until :meth:`to` decodes them on the device.
    """

    inputs: torch.Tensor
    labels: torch.Tensor
    indices: torch.Tensor
    views: torch.Tensor
    targets: dict[str, Any] = field(default_factory=dict)
    decoders: dict[str, Target | EnsembleDecoder] = field(default_factory=dict, repr=False)
    params: torch.Tensor | None = None

    def pin_memory(self) -> Batch:
        """Called by DataLoader(pin_memory=True): page-lock every tensor so the copy to the GPU can overlap."""
        pinned = {name: {k: v.pin_memory() for k, v in arrays.items()} for name, arrays in self.targets.items()}
        return replace(self, inputs=self.inputs.pin_memory(), labels=self.labels.pin_memory(), targets=pinned)

    def to(self, device: torch.device | str) -> Batch:
        """Move to ``device`` (non-blocking from pinned memory) and decode every target there."""
        device = torch.device(device)
        decoded = {
            name: self.decoders[name].decode({k: v.to(device, non_blocking=True) for k, v in arrays.items()})
            for name, arrays in self.targets.items()
        }
        return replace(
            self,
            inputs=self.inputs.to(device, non_blocking=True),
            labels=self.labels.to(device, non_blocking=True),
            targets=decoded,
            decoders={},
        )


POLICIES = ("cycle", "random", "fresh")


class ViewDataset(Dataset):
    """Model inputs and labels for batches of sample indices, with the view chosen per (epoch, sample) by ``policy``:

    * ``cycle``: view ``(sample + epoch) % count``, so every cached view is used in turn;
    * ``random``: a view in ``[0, count)`` drawn from a generator keyed by (seed, epoch, sample);
    * ``fresh``: view ``1 + epoch``, a new augmented view of every sample each epoch that no other epoch repeats
      (online KD and scratch training; a cache holds only views ``0 .. count-1``).
    """

    def __init__(self, dataset: SampleDataset, views: ViewTransform, *, policy: str = "cycle") -> None:
        if policy not in POLICIES:
            raise ConfigError(f"unknown view policy {policy!r}; valid policies: {', '.join(POLICIES)}")
        self.dataset = dataset
        self.views = views
        self.policy = policy
        self.epoch = 0

    def __len__(self) -> int:
        return len(self.dataset)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def view_ids(self, indices: np.ndarray) -> np.ndarray:
        """The view each sample gets this epoch, by the dataset's policy."""
        count = self.views.count
        if self.policy == "fresh":
            return np.full(len(indices), 1 + self.epoch, dtype=np.int64)
        if count == 1:
            return np.zeros(len(indices), dtype=np.int64)
        if self.policy == "cycle":
            return (indices + self.epoch) % count
        keyed = [np.random.default_rng([self.views.seed, self.epoch, int(i)]).integers(count) for i in indices]
        return np.asarray(keyed, dtype=np.int64)

    def __getitem__(self, indices: list[int] | np.ndarray) -> Batch:
        indices = np.ascontiguousarray(indices, dtype=np.int64)
        view_ids = self.view_ids(indices)
        raw, labels = self.dataset.get_batch(indices)
        params = self.views.params(indices, view_ids, tuple(raw.shape[-2:]))
        return Batch(
            inputs=self.views.apply(raw, params, view_ids),
            labels=labels,
            indices=torch.from_numpy(indices),
            views=torch.from_numpy(view_ids),
            params=torch.from_numpy(params),
        )


class CachedDataset(ViewDataset):
    """:class:`ViewDataset` whose batches also carry the cached teacher targets of their samples.

    Each batch pairs view ``v`` of sample ``i`` with ``targets[i, v]``. The store must have been cached with the
    same view spec; when it holds ``views/params``, the numbers regenerated for every batch are checked against
    the stored ones bit for bit, so a replay that drifted (another RNG or transform code) is refused, not trained on.

    >>> train = CachedDataset(dataset, open_cache(path), teacher="cnn64", targets=["logits"], views=views)  # doctest: +SKIP
    >>> for batch in batch_loader(train, batch_size=64, seed=0):
    ...     batch = batch.to(device)  # batch.targets["logits"] is (64, 10) float32
    """

    def __init__(
        self,
        dataset: SampleDataset,
        cache: Cache,
        *,
        teacher: str | Ensemble | None,
        targets: list[str],
        views: ViewTransform,
        policy: str = "cycle",
        ram_budget_bytes: float = 2 * 1024**3,
    ) -> None:
        super().__init__(dataset, views, policy=policy)
        if policy == "fresh":
            raise ConfigError(
                "view policy 'fresh' draws views a cache does not hold (it caches views 0..count-1); use 'cycle' or "
                "'random' with a cache, and 'fresh' for online KD or scratch training"
            )
        cache.require_views(views.spec())
        rows = cache.sample_index()
        self.row_of = np.full(max(len(dataset), int(rows.max(initial=-1)) + 1), -1, dtype=np.int64)
        self.row_of[rows] = np.arange(len(rows))
        self.decoders, records = _target_sources(cache, teacher, targets)
        budget = ram_budget_bytes
        self.readers: dict[str, dict[str, ArrayReader]] = {name: {} for name in targets}
        for name, key, owner, rec in sorted(records, key=lambda r: _nbytes(r[3].shape, r[3].dtype)):
            size = _nbytes(rec.shape, rec.dtype)
            fits = size <= budget
            budget -= size if fits else 0
            reader = cache.array_reader(rec, owner, in_memory=fits)
            if fits:
                reader.read_all()  # load (and verify) once, before DataLoader workers fork and share it
            self.readers[name][key] = reader
        self.params_reader = self._params_reader(cache, budget)

    @staticmethod
    def _params_reader(cache: Cache, budget: float) -> ArrayReader | None:
        record = cache.manifest.samples.arrays.get(VIEW_PARAMS)
        if record is None:
            return None
        reader = cache.array_reader(record, SAMPLES_OWNER, in_memory=_nbytes(record.shape, record.dtype) <= budget)
        if reader.in_memory:
            reader.read_all()
        return reader

    def __getitem__(self, indices: list[int] | np.ndarray) -> Batch:
        batch = super().__getitem__(indices)
        rows = self.row_of[batch.indices.numpy()]
        if (rows < 0).any():
            absent = batch.indices.numpy()[rows < 0][:10].tolist()
            raise StoreMismatchError(f"samples {absent} are not in the store; it was built for another subset")
        views = batch.views.numpy()
        if self.params_reader is not None:
            self._check_params(batch, self.params_reader.read_rows(rows, views))
        batch.targets = {
            name: {rel: torch.from_numpy(reader.read_rows(rows, views)) for rel, reader in arrays.items()}
            for name, arrays in self.readers.items()
        }
        batch.decoders = self.decoders
        return batch

    def _check_params(self, batch: Batch, stored: np.ndarray) -> None:
        """Refuse a batch whose regenerated view numbers differ (bitwise) from what stage one stored."""
        drawn = batch.params.numpy()
        bad = (drawn.view(np.uint32) != stored.view(np.uint32)).any(axis=1)
        if bad.any():
            pairs = list(zip(batch.indices.numpy()[bad].tolist(), batch.views.numpy()[bad].tolist(), strict=True))
            raise StoreMismatchError(
                f"views of (sample, view) pairs {pairs[:10]} replay with other numbers than stage one stored in "
                f"{VIEW_PARAMS} (e.g. {drawn[bad][0].tolist()} vs {stored[bad][0].tolist()}): the view RNG or "
                "transform code changed since the store was built. Train with the kdcache/numpy versions that built "
                "it (`kdcache inspect` lists them) or rebuild the store"
            )


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
    batch (:class:`kdcache.sampler.EpochBatchSampler`), so the samples of each step do not depend on the number of
    processes. ``multiprocessing_context`` (``"spawn"``, ``"forkserver"``, ``"fork"``) starts the workers that way;
    views are a pure function of (seed, sample, view), so every start method gives the same batches.
    """
    block = 1
    if isinstance(dataset, CachedDataset):  # streamed targets are read chunk by chunk: keep reads chunk-sequential
        streamed = [r.chunk for arrays in dataset.readers.values() for r in arrays.values() if not r.in_memory]
        block = max(streamed, default=1)
    sampler = EpochBatchSampler(len(dataset), batch_size, seed=seed, shuffle=shuffle, block=block, world=world)
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
    loader.sampler.set_epoch(epoch, start_step=start_step)  # type: ignore[union-attr]
    loader.dataset.set_epoch(epoch)  # type: ignore[union-attr]


def _identity(batch: Batch) -> Batch:
    return batch


def _target_sources(
    cache: Cache, teacher: str | Ensemble | None, targets: list[str]
) -> tuple[dict[str, Target | EnsembleDecoder], list[tuple[str, str, str, ArrayRecord]]]:
    """Each target's decoder and the arrays to read for it: ``(target, array key, owner, record)``. A single
    teacher's arrays are keyed by their name; an ensemble's by ``<member>/<name>``, decoded and combined together."""
    if teacher is None:
        cache.teacher(None)  # refuses a store with several teachers: the caller must name one
        teacher = cache.teachers[0]
    members = teacher.members if isinstance(teacher, Ensemble) else (teacher,)
    found: dict[str, dict[str, TargetRecord]] = {}
    for member in members:
        record = cache.teacher(member)
        missing = sorted(set(targets) - set(record.targets))
        if missing:
            raise StoreMismatchError(
                f"store {cache.url!r}, teacher {member!r} has no target(s) {missing}; it holds "
                f"{sorted(record.targets)}. Add them to cache.targets and run `kdcache precompute`"
            )
        found[member] = {name: record.targets[name] for name in targets}
    decoders: dict[str, Target | EnsembleDecoder] = {}
    records: list[tuple[str, str, str, ArrayRecord]] = []
    for name in targets:
        built = {m: build_target(found[m][name].kind, found[m][name].params) for m in members}
        if isinstance(teacher, Ensemble):
            kinds = {m: found[m][name].kind for m in members}
            if set(kinds.values()) != {"logits"}:  # one store fixes classes and views, so logits shapes agree
                raise StoreMismatchError(
                    f"store {cache.url!r}: an ensemble averages logits, but target {name!r} is {kinds}. "
                    "Train from one teacher for targets of other kinds"
                )
            decoders[name] = EnsembleDecoder(built, teacher.mode)
        else:
            decoders[name] = built[teacher]
        records += [
            (name, f"{m}/{rel}" if isinstance(teacher, Ensemble) else rel, owner_of_teacher(m), rec)
            for m in members
            for rel, rec in found[m][name].arrays.items()
        ]
    return decoders, records


def _nbytes(shape: list[int], dtype: str) -> int:
    return int(np.prod(shape, dtype=np.int64)) * np.dtype(dtype).itemsize
