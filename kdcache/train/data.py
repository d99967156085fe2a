"""Stage two's data path: inputs joined with cached targets by sample index, a batch per call.

``CachedDataset`` is indexed by a *batch* of sample indices (use it with :func:`batch_loader`): the inputs of those
samples are read from the dataset, their targets from the store in one call per array, and the two are paired by
index, never by position in the batch. Targets travel as their stored dtype (float16, int8, ...) through CPU memory
(pinned when the device is CUDA) and are decoded on the training device by :meth:`Batch.to`.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any, overload

import numpy as np
import torch
from torch.utils.data import Dataset

from kdcache.checkpoint import load_state_dict, state_digest
from kdcache.datasets.base import SampleDataset
from kdcache.datasets.fingerprint import dataset_fingerprint
from kdcache.datasets.items import as_sample_dataset
from kdcache.errors import ConfigError, PerformanceWarning, StoreMismatchError
from kdcache.store import SAMPLE_DIGEST, SAMPLES_OWNER, VIEW_DIGEST, VIEW_PARAMS, ArrayReader, Requirements, StoreReader
from kdcache.store.layout import Owner, owner_of_teacher
from kdcache.store.manifest import ArrayRecord
from kdcache.targets import Ensemble, EnsembleDecoder, Target
from kdcache.train.batch import Batch, source_identity
from kdcache.train.decoding import check_values, checked_target, value_checks
from kdcache.train.epochs import POLICIES, EpochBatch, EpochGuard, ViewPolicy, view_ids_for
from kdcache.train.pinning import source_record
from kdcache.train.samplecheck import SampleCheck
from kdcache.train.viewcheck import ViewCheck
from kdcache.views import ViewBatch, Views, views_from_spec

SINGLE_READS_WARNED = 1024  # single-index reads after which a dataset warns that batches would be far cheaper


class ViewDataset(Dataset):
    """Model inputs and labels for batches of sample indices, with the view chosen per (epoch, sample) by ``policy``:

    * ``cycle``: view ``(sample + epoch) % count``, so every cached view is used in turn;
    * ``random``: a view in ``[0, count)`` drawn from a generator keyed by (seed, epoch, sample);
    * ``fresh``: view ``1 + epoch``, a new augmented view of every sample each epoch that no other epoch repeats
      (online KD and scratch training; a cache holds only views ``0 .. count-1``).
    """

    def __init__(self, dataset: SampleDataset | Dataset, views: Views, *, policy: ViewPolicy = "cycle") -> None:
        if policy not in POLICIES:
            raise ConfigError(f"unknown view policy {policy!r}; valid policies: {', '.join(POLICIES)}")
        self.dataset = as_sample_dataset(dataset)
        self.views = views
        self.policy = policy
        self.epoch = 0
        self.guard = EpochGuard(len(self.dataset), varies=views.count > 1 or policy == "fresh")
        self.block_sampled = False  # set by BlockShuffleSampler: per-sample reads come in chunk order
        self._warned = False
        self._single_reads = 0  # samples read one index per call (__getitem__ with an int)
        self.decoders: dict[str, Target | EnsembleDecoder] = {}
        self.url: str | None = None  # the store a cached dataset reads
        self.source: torch.Tensor | None = None  # identity of the stored targets its items carry (a cached dataset)

    def __len__(self) -> int:
        return len(self.dataset)

    def read_block(self) -> int:
        """Samples the sampler should keep together when it shuffles (1: any order is as cheap as another)."""
        return 1

    def resume_record(self) -> dict[str, Any]:
        """What of this data a resumed run must find unchanged (:mod:`kdcache.train.pinning`): views and policy."""
        return {"views": self.views.spec()["digest"], "policy": self.policy}

    def set_epoch(self, epoch: int) -> None:
        """The epoch of indices that carry none (kdcache's samplers hand each index its own epoch)."""
        self.epoch = epoch
        self.guard.set_epoch(epoch)

    def view_ids(self, indices: np.ndarray, epoch: int | None = None) -> np.ndarray:
        """The view each sample gets in ``epoch`` (default: the dataset's own), by the dataset's policy."""
        return view_ids_for(self.views, self.policy, indices, self.epoch if epoch is None else epoch)

    @overload
    def __getitem__(self, key: int | np.integer) -> dict[str, Any]: ...

    @overload
    def __getitem__(self, key: list[int] | np.ndarray | EpochBatch) -> Batch: ...

    def __getitem__(self, key: int | np.integer | list[int] | np.ndarray | EpochBatch) -> Batch | dict[str, Any]:
        """A batch of samples for a batch of indices (:func:`batch_loader`), or one sample's dict for one index (a
        plain ``DataLoader``; turn its collated batches into :class:`Batch` with :meth:`as_batch`). Indices from
        kdcache's samplers carry their epoch (:mod:`kdcache.train.epochs`); others are read at :attr:`epoch`."""
        if isinstance(key, EpochBatch):
            return self.batch_of(np.ascontiguousarray(key.indices, dtype=np.int64), epoch=key.epoch)
        if isinstance(key, int | np.integer):
            self._warn_per_item()
            self._count_single_reads()
            return self._items([key])[0]
        indices = np.ascontiguousarray(key, dtype=np.int64)
        self.guard.check(indices, self.epoch, per_item=False)
        return self.batch_of(indices)

    def __getitems__(self, keys: list[int]) -> list[dict[str, Any]]:
        """The per-sample dicts of a plain ``DataLoader``'s batch of indices (``batch_size=B``, any sampler), made
        by one batch read: torch's fetcher calls this instead of ``__getitem__`` once per index, so per-sample
        loading costs what :func:`batch_loader` costs plus the split into dicts and their collation."""
        self._warn_per_item()
        return self._items(keys)

    def _items(self, keys: Sequence[int | np.integer]) -> list[dict[str, Any]]:
        """The dicts of samples ``keys``, read as one batch at their epoch (kdcache's samplers' indices carry it;
        others are read at :attr:`epoch` under the epoch guard); keys of several epochs are read epoch by epoch."""
        epochs = {getattr(key, "epoch", None) for key in keys}
        if len(epochs) > 1:
            return [item for key in keys for item in self._items([key])]
        indices = np.fromiter(map(int, keys), dtype=np.int64, count=len(keys))
        epoch = epochs.pop() if keys else None
        if epoch is None:
            self.guard.check(indices, self.epoch, per_item=True)
        return self.batch_of(indices, epoch=epoch).items()

    def batch_of(self, indices: np.ndarray, epoch: int | None = None) -> Batch:
        """The training batch of samples ``indices``, with the views of ``epoch`` (default: the dataset's own)."""
        view_ids = self.view_ids(indices, epoch)
        return self.make_batch(indices, view_ids, self.views.batch(self.dataset, indices, view_ids))

    def as_batch(self, collated: dict[str, Any]) -> Batch:
        """A :class:`Batch` from a plain ``DataLoader``'s collated per-sample dicts; ``.to(device)`` then moves it
        and decodes its targets on the device.

        >>> for items in DataLoader(train, batch_size=64, sampler=BlockShuffleSampler(train)):  # doctest: +SKIP
        ...     batch = train.as_batch(items).to(device)
        """
        store = f" of store {self.url!r}" if self.url else ""
        return Batch.from_items(collated, self.decoders, self.source, dataset=f"this {type(self).__name__}{store}")

    def _count_single_reads(self) -> None:
        """Warn once when samples are read one index per call many times: each call pays a batch's bookkeeping
        (views, digest checks, target gathers) for one sample, ~20-50x slower per sample than batches in RAM."""
        self._single_reads += 1
        if self._single_reads == SINGLE_READS_WARNED and not self._warned:
            self._warned = True
            warnings.warn(
                f"{type(self).__name__} was read one sample per call {SINGLE_READS_WARNED} times: every call pays a "
                "whole batch's views, digest checks and target reads for one sample. Read batches: "
                "DataLoader(dataset, batch_size=B, ...) (which fetches each batch in one call, through "
                "__getitems__) or batch_loader(dataset, batch_size=B)",
                PerformanceWarning,
                stacklevel=3,
            )

    def _warn_per_item(self) -> None:
        """Per-sample reads of streamed targets cost a chunk read each unless the order keeps chunks together."""
        if self.read_block() > 1 and not self.block_sampled and not self._warned:
            self._warned = True
            warnings.warn(
                f"{type(self).__name__} streams targets from the store in chunks of {self.read_block()} samples; "
                "reading samples one by one in random order pays a read per sample (a whole chunk's decode for a "
                "compressed array). Order them with "
                "sampler=BlockShuffleSampler(dataset) (or use batch_loader, which reads a batch per call)",
                PerformanceWarning,
                stacklevel=3,
            )

    def make_batch(self, indices: np.ndarray, view_ids: np.ndarray, made: ViewBatch) -> Batch:
        """The training batch of samples ``indices`` from their views ``view_ids`` (this epoch's, by the policy)."""
        return Batch(
            inputs=made.inputs,
            labels=made.labels,
            indices=torch.from_numpy(indices),
            views=torch.from_numpy(view_ids),
            params=torch.from_numpy(made.params),
            mix=made.mix,
        )


class CachedDataset(ViewDataset):
    """:class:`ViewDataset` whose batches also carry the cached teacher targets of their samples.

    Each batch pairs view ``v`` of sample ``i`` with ``targets[i, v]``. The store is refused (:meth:`StoreReader.require`)
    unless it is complete for the teacher(s), holds the targets and was cached from this dataset (its fingerprint)
    with the same view spec; ``num_classes``, when given, must be the teachers' logits width, and
    ``teacher_checkpoint``, when given, the weights the (single) teacher was cached from. Every sample loaded is
    then checked against the content digest stage one stored for it (:mod:`kdcache.train.samplecheck`):
    a reordered, edited or self-augmenting dataset raises :class:`~kdcache.errors.SampleMismatchError` naming the
    sample and the likely cause (``allow_sample_mismatch=True`` downgrades that to a logged warning). When the store
    holds ``views/params``, the numbers regenerated for every batch are checked against the stored ones bit for
    bit, so a replay that drifted (another RNG or transform code) is refused, not trained on. ``teacher`` may be
    left out when the store has one, ``targets`` to train on all of them, ``views`` when they are normalisation and
    kdcache's ops (rebuilt from the store's spec; a torchvision pipeline must be passed).

    Indexed by one sample it returns that sample's dict (:meth:`Batch.item`), so a plain ``DataLoader`` works too:
    collate, then :meth:`as_batch` and ``.to(device)``; order its samples with
    :class:`~kdcache.train.sampler.BlockShuffleSampler` so streamed targets are read chunk by chunk.

    >>> train = CachedDataset(dataset, open_store(path), teacher="cnn64", targets=["logits"], views=views)  # doctest: +SKIP
    >>> for batch in batch_loader(train, batch_size=64, seed=0):
    ...     batch = batch.to(device)  # batch.targets["logits"] is (64, 10) float32
    """

    url: str  # the store it reads (a plain ViewDataset has none)

    def __init__(
        self,
        dataset: SampleDataset,
        cache: StoreReader,
        *,
        teacher: str | Ensemble | None = None,
        targets: list[str] | None = None,
        views: Views | None = None,
        policy: ViewPolicy = "cycle",
        ram_budget_bytes: float = 2 * 1024**3,
        num_classes: int | None = None,
        teacher_checkpoint: str | Path | None = None,
        allow_sample_mismatch: bool = False,
    ) -> None:
        super().__init__(dataset, views or views_from_spec(cache.manifest.views), policy=policy)
        views = self.views
        if policy == "fresh":
            raise ConfigError(
                "view policy 'fresh' draws views a cache does not hold (it caches views 0..count-1); use 'cycle' or "
                "'random' with a cache, and 'fresh' for online KD or scratch training"
            )
        if teacher is None:
            cache.teacher(None)  # refuses a store with several teachers: the caller must name one
            teacher = cache.teachers[0]
        members = teacher.members if isinstance(teacher, Ensemble) else (teacher,)
        if targets is None:  # every target all members hold
            targets = sorted(set.intersection(*(set(cache.teacher(m).targets) for m in members)))
        stored_classes = cache.manifest.dataset["num_classes"]  # recorded by stage one's dataset_fingerprint
        cache.require(
            Requirements(
                teachers=tuple(members),
                targets=tuple(targets),
                num_classes=num_classes,
                dataset=dataset_fingerprint(self.dataset, num_classes=stored_classes),
                views=views.spec(),
                teacher_state=None if teacher_checkpoint is None else state_digest(load_state_dict(teacher_checkpoint)),
            )
        )
        rows = cache.sample_index()
        self.row_of = np.full(max(len(self.dataset), int(rows.max(initial=-1)) + 1), -1, dtype=np.int64)
        self.row_of[rows] = np.arange(len(rows))
        self.decoders, records = _target_sources(cache, teacher, targets)
        self.url = cache.url
        self.value_checks = value_checks(cache, self.decoders, teacher if isinstance(teacher, str) else "")
        arrays = {name: {key: rec.dtype for key, rec in arrays.items()} for name, arrays in _by_target(records).items()}
        self.source = source_identity(cache.url, cache.manifest.digest, arrays)
        self.readers, budget = _open_readers(cache, targets, records, ram_budget_bytes)
        self.params_reader = self._params_reader(cache, budget)
        digests = cache.array_reader(cache.manifest.samples.arrays[SAMPLE_DIGEST], SAMPLES_OWNER, in_memory=True)
        self.check = SampleCheck(cache.url, self.dataset, digests, allow_mismatch=allow_sample_mismatch)
        inputs = cache.array_reader(cache.manifest.samples.arrays[VIEW_DIGEST], SAMPLES_OWNER, in_memory=True)
        self.check_views = ViewCheck(
            cache.url,
            self.dataset,
            views,
            inputs,
            allow_mismatch=allow_sample_mismatch,
            built_on=cache.manifest.library.get("torch_cpu_capability"),
        )
        self.store_record = source_record(cache, teacher, targets)  # what a resumed run must find unchanged

    def resume_record(self) -> dict[str, Any]:
        """Views and policy, and the store as this dataset reads it: records, teacher fingerprints, targets."""
        return super().resume_record() | self.store_record

    def read_block(self) -> int:
        """Streamed targets are read chunk by chunk: keep each epoch's reads chunk-sequential (block shuffle)."""
        streamed = [r.chunk for arrays in self.readers.values() for r in arrays.values() if not r.in_memory]
        return max(streamed, default=1)

    @staticmethod
    def _params_reader(cache: StoreReader, budget: float) -> ArrayReader | None:
        record = cache.manifest.samples.arrays.get(VIEW_PARAMS)
        if record is None:
            return None
        reader = cache.array_reader(record, SAMPLES_OWNER, in_memory=_nbytes(record.shape, record.dtype) <= budget)
        if reader.in_memory:
            reader.read_all()
        return reader

    def batch_of(self, indices: np.ndarray, epoch: int | None = None) -> Batch:
        rows = self.row_of[indices]
        if (rows < 0).any():
            absent = indices[rows < 0][:10].tolist()
            raise StoreMismatchError(f"samples {absent} are not in the store; it was built for another subset")
        view_ids = self.view_ids(indices, epoch)
        made = self.views.batch(self.dataset, indices, view_ids)
        self.check(indices, rows, made.raw, made.labels)
        if made.partners is not None and (mixed := made.partners >= 0).any():  # the partners' content is cached too
            partner_raw, partner_labels = made.partner_raw, made.partner_labels
            assert partner_raw is not None and partner_labels is not None  # ViewTransform.batch sets them with partners
            self.check(
                made.partners[mixed],
                self.row_of[made.partners[mixed]],
                partner_raw,
                partner_labels[torch.from_numpy(mixed)],
            )
        batch = self.make_batch(indices, view_ids, made)
        if self.params_reader is not None:  # first: drifted numbers name the numbers, the digest only the pairs
            self._check_params(batch, made.params, self.params_reader.read_rows(rows, view_ids))
        self.check_views(indices, view_ids, rows, made.inputs)
        stored = {
            name: {rel: reader.read_rows(rows, view_ids) for rel, reader in arrays.items()}
            for name, arrays in self.readers.items()
        }
        check_values(self.url, self.value_checks, stored, indices)
        batch.stored = {name: {k: torch.from_numpy(v) for k, v in arrays.items()} for name, arrays in stored.items()}
        batch.decoders = self.decoders
        batch.source = self.source
        return batch

    def _check_params(self, batch: Batch, drawn: np.ndarray, stored: np.ndarray) -> None:
        """Refuse a batch whose regenerated view numbers ``drawn`` differ (bitwise) from what stage one stored."""
        bad = (drawn.view(np.uint32) != stored.view(np.uint32)).any(axis=1)
        if bad.any():
            pairs = list(zip(batch.indices.numpy()[bad].tolist(), batch.views.numpy()[bad].tolist(), strict=True))
            raise StoreMismatchError(
                f"views of (sample, view) pairs {pairs[:10]} replay with other numbers than stage one stored in "
                f"{VIEW_PARAMS} (e.g. {drawn[bad][0].tolist()} vs {stored[bad][0].tolist()}): the view RNG or "
                "transform code changed since the store was built. Train with the kdcache/numpy versions that built "
                "it (`kdcache inspect` lists them) or rebuild the store"
            )


def _target_sources(
    cache: StoreReader, teacher: str | Ensemble, targets: list[str]
) -> tuple[dict[str, Target | EnsembleDecoder], list[tuple[str, str, Owner, ArrayRecord]]]:
    """Each target's decoder and the arrays to read for it: ``(target, array key, owner, record)``. A single
    teacher's arrays are keyed by their name; an ensemble's by ``<member>/<name>``, decoded and combined together."""
    members = teacher.members if isinstance(teacher, Ensemble) else (teacher,)
    found = {m: {name: cache.teacher(m).targets[name] for name in targets} for m in members}
    decoders: dict[str, Target | EnsembleDecoder] = {}
    records: list[tuple[str, str, Owner, ArrayRecord]] = []
    for name in targets:
        built = {m: checked_target(cache.url, m, name, found[m][name]) for m in members}
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


def _open_readers(
    cache: StoreReader, targets: list[str], records: list[tuple[str, str, Owner, ArrayRecord]], budget: float
) -> tuple[dict[str, dict[str, ArrayReader]], float]:
    """A reader for every array, smallest first: in RAM (loaded and verified once, before DataLoader workers fork
    and share it) while they fit ``budget``, streamed after that. Returns them and the budget left."""
    readers: dict[str, dict[str, ArrayReader]] = {name: {} for name in targets}
    for name, key, owner, rec in sorted(records, key=lambda r: _nbytes(r[3].shape, r[3].dtype)):
        size = _nbytes(rec.shape, rec.dtype)
        fits = size <= budget
        budget -= size if fits else 0
        reader = cache.array_reader(rec, owner, in_memory=fits)
        if fits:
            reader.read_all()
        readers[name][key] = reader
    return readers, budget


def _by_target(records: list[tuple[str, str, Owner, ArrayRecord]]) -> dict[str, dict[str, ArrayRecord]]:
    """The records of :func:`_target_sources` by target, then array key."""
    found: dict[str, dict[str, ArrayRecord]] = {}
    for name, key, _, rec in records:
        found.setdefault(name, {})[f"{key}={rec.path}"] = rec
    return found


def _nbytes(shape: list[int], dtype: str) -> int:
    return int(np.prod(shape, dtype=np.int64)) * np.dtype(dtype).itemsize
