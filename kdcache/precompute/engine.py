"""Stage one's per-shard step: run a frozen teacher over a shard range and return the rows of every array.

Work is planned in whole shards (:class:`ShardWork`). The per-shard step has two halves: the teacher's forward
passes (:meth:`TeacherRun.batches`) and the checks, encodings and digests of each batch
(:class:`~kdcache.precompute.fill.ShardFill`). A dask task runs them in turn (:meth:`TeacherRun.compute`); the
single-process writer runs the second half on its writer thread (:mod:`kdcache.precompute.local`).
Committed shards are skipped when a run is repeated, so an interrupted run resumes at the first uncommitted shard.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from kdcache.datasets.fingerprint import dataset_fingerprint
from kdcache.errors import ConfigError
from kdcache.models.fingerprint import teacher_fingerprint
from kdcache.precompute.fill import ShardFill, ShardRows, TeacherBatch
from kdcache.precompute.job import StageOneJob
from kdcache.precompute.samples import pairs, sample_arrays
from kdcache.precompute.tokens import check_teacher_tokens
from kdcache.store import (
    SAMPLES_OWNER,
    ArraySpec,
    StoreBuilder,
    StoreLocation,
    StoreLock,
    TargetLayout,
    io_errors,
    library_versions,
    plan_shard_samples,
    read_manifest,
    shard_ranges,
)
from kdcache.store.layout import owner_of_teacher, teacher_path
from kdcache.targets import Target, TargetExtractor
from kdcache.views import ViewBatch, check_replayable

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class PrecomputeReport:
    """What a precompute run did."""

    store: str
    teacher: str
    shards_written: int
    shards_skipped: int
    samples_written: int
    seconds: float
    complete: bool
    accuracy: float | None

    @property
    def samples_per_second(self) -> float | None:
        """Teacher samples cached per second in this run; None when everything was already committed."""
        return self.samples_written / self.seconds if self.samples_written and self.seconds else None


@dataclass(frozen=True)
class ShardWork:
    """One unit of stage-one work: shard ``index`` (samples ``[start, stop)``) for the owners still missing it."""

    index: int
    start: int
    stop: int
    owners: tuple[str, ...]


@dataclass(frozen=True)
class StoreDeclaration:
    """What a teacher run declares in its store: the dataset, views and teacher fingerprints, each target's arrays
    and the sample arrays. Plain data, so a dask worker can compute it and the coordinator open the store with it
    without ever importing the user's model or dataset code."""

    name: str
    num_samples: int
    dataset: dict[str, Any]
    views: dict[str, Any]
    fingerprint: dict[str, Any]
    layouts: dict[str, TargetLayout]
    sample_arrays: dict[str, ArraySpec]

    @property
    def owner(self) -> str:
        return owner_of_teacher(self.name)


def plan_work(builder: StoreBuilder, owner: str) -> list[ShardWork]:
    """Every shard range that ``owner`` (a teacher) or the sample arrays have not committed yet, in order."""
    pending = {o: set(builder.pending_shards(o)) for o in (owner, SAMPLES_OWNER)}
    ranges = shard_ranges(builder.manifest.num_samples, builder.manifest.shard_samples)
    work = [
        ShardWork(k, lo, hi, tuple(o for o in (owner, SAMPLES_OWNER) if k in pending[o]))
        for k, (lo, hi) in enumerate(ranges)
    ]
    return [w for w in work if w.owners]


class TeacherRun:
    """A :class:`StageOneJob` made real: the teacher loaded, the dataset opened, each target's layout traced.

    Computes the stored rows of any shard range. One instance serves a whole single-process run and, on a dask
    worker, every task that worker runs (the teacher is loaded once per worker). Not thread-safe: the layer capture
    holds the latest batch's activations (a :class:`TeacherBatch` it yields holds its own, for another thread).
    """

    def __init__(self, job: StageOneJob) -> None:
        self.job = job
        self.name = job.teacher_name
        self.owner = owner_of_teacher(job.teacher_name)
        for target in job.targets:
            teacher_path(job.teacher_name, target.name)  # refuses unsafe names before anything runs or is written
        teacher = job.build_teacher()
        self.dataset = job.build_dataset()
        check_teacher_tokens(teacher, self.dataset, self.name, allow_tokenizer_mismatch=job.allow_tokenizer_mismatch)
        self.targets = list(job.targets)
        self.views = job.views
        if self.views.seeded_code:
            check_replayable(self.views, self.dataset)  # before anything is cached: the key must control the pixels
        self.num_classes = job.num_classes
        self.extract = TargetExtractor(teacher, self.targets, job.torch_device)
        self.layouts = self._trace_layouts()
        self.fingerprint = teacher_fingerprint(teacher, spec=job.spec(teacher), layers=self.extract.layers)
        self.sample_arrays = sample_arrays(
            self.dataset, self.views.count, self.views.param_names, store_tokens=job.store_tokens
        )

    def close(self) -> None:
        self.extract.close()

    def __enter__(self) -> TeacherRun:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def dataset_fingerprint(self) -> dict[str, Any]:
        return dataset_fingerprint(self.dataset, num_classes=self.num_classes)

    def declaration(self) -> StoreDeclaration:
        """What this run declares in its store (see :func:`open_builder`)."""
        return StoreDeclaration(
            name=self.name,
            num_samples=len(self.dataset),
            dataset=self.dataset_fingerprint(),
            views=self.views.spec(),
            fingerprint=self.fingerprint,
            layouts=self.layouts,
            sample_arrays=self.sample_arrays,
        )

    def compute(
        self, work: ShardWork, builder: StoreBuilder, progress: Callable[[int], object] | None = None
    ) -> list[ShardRows]:
        """The rows to commit for one shard range, for each owner in ``work.owners``: every batch's forward pass,
        each added to a :class:`ShardFill` in turn (what a dask task runs; the single-process writer runs the same
        two halves on two threads). ``progress`` is called with samples done."""
        fill = ShardFill(self, work, builder)
        for batch in self.batches(work):
            fill.add(batch)
            if progress is not None:
                progress(len(batch.samples) // self.views.count)
        return fill.rows()

    def batches(self, work: ShardWork) -> Iterator[TeacherBatch]:
        """The teacher's forward pass over shard range ``work`` a batch of whole samples at a time (none when the
        teacher's shard is committed already): the part of stage one that runs where the teacher runs."""
        if self.owner not in work.owners:
            return
        v = self.views.count
        samples, view_ids = pairs(work.start, work.stop, v)
        step = max(1, self.job.batch_size // v) * v  # whole samples per batch, so rows of the buffers stay aligned
        for b in range(0, len(samples), step):
            s, vid = samples[b : b + step], view_ids[b : b + step]
            made, logits, values = self._forward(s, vid)
            yield TeacherBatch(b // v, s, vid, made, logits, values)

    def _trace_layouts(self) -> dict[str, TargetLayout]:
        """Run one tiny batch to learn each target's per-sample shape, then lay out its arrays."""
        samples, view_ids = pairs(0, min(2, len(self.dataset)), 1)
        _, logits, values = self._forward(samples, view_ids)
        self._check_classes(logits)
        layouts: dict[str, TargetLayout] = {}
        for target in self.targets:
            if target.name in layouts:
                raise ConfigError(f"target {target.name!r} is listed twice; list each target once")
            value_shape = tuple(values[target.name].shape[1:])
            layouts[target.name] = target_layout(target, self.name, value_shape, self.views.count)
        return layouts

    def _check_classes(self, logits: torch.Tensor) -> None:
        """The teacher's output width is the class count the store records (``(B, positions, vocab)`` logits of a
        language model: the vocabulary)."""
        classes = int(logits.shape[-1] if logits.dim() == 3 else logits.shape[1])
        if self.num_classes is None:
            self.num_classes = classes
        if classes != self.num_classes:
            raise ConfigError(
                f"teacher {self.name!r} outputs {classes} classes (logits of shape {tuple(logits.shape)}) but stage one "
                f"was told num_classes={self.num_classes}. Pass num_classes={classes} (or leave it out: it is read "
                "from the teacher), or check that this is the right teacher"
            )

    def _forward(
        self, samples: np.ndarray, view_ids: np.ndarray
    ) -> tuple[ViewBatch, torch.Tensor, dict[str, torch.Tensor]]:
        """The views of the given (sample, view) pairs, the teacher's logits and every target's value on them."""
        made = self.views.batch(self.dataset, samples, view_ids)
        logits, values = self.extract(made.inputs)
        return made, logits, values


def target_layout(target: Target, teacher: str, value_shape: tuple[int, ...], views: int) -> TargetLayout:
    """How ``target`` of ``teacher`` is stored for values of ``value_shape``: its arrays, with their attributes."""
    arrays = {
        rel: ArraySpec(teacher_path(teacher, rel), a.sample_shape, a.dtype, a.compressor, views=views, attributes=attrs)
        for rel, (a, attrs) in target.stored_arrays(teacher, value_shape).items()
    }
    return TargetLayout(target.kind, target.describe(), arrays, value_shape)


def open_builder(declared: StoreDeclaration, location: StoreLocation, shard_samples: int | None) -> StoreBuilder:
    """Create (or open and check) the store for the declared dataset and views, and declare the teacher in it.

    Without ``shard_samples`` an existing store keeps its shard size (a second teacher joins the first one's shard
    ranges) and a new store gets :func:`plan_shard_samples`'s choice.
    """
    n = declared.num_samples
    if shard_samples is None:
        if location.exists("kdcache.manifest.json"):
            shard_samples = read_manifest(location).shard_samples
        else:
            sizes = [spec.bytes_per_sample for layout in declared.layouts.values() for spec in layout.arrays.values()]
            shard_samples = plan_shard_samples(sizes, n)
    builder = StoreBuilder.create_or_open(
        location,
        num_samples=n,
        shard_samples=shard_samples,
        dataset=declared.dataset,
        views=declared.views,
        sample_arrays=declared.sample_arrays,
        library=library_facts(),
    )
    builder.add_teacher(declared.name, declared.fingerprint, declared.layouts)
    return builder


def library_facts() -> dict[str, str]:
    """What a new store records of the software that made it: the library versions, and the torch CPU kernels
    (``ATEN_CPU_CAPABILITY``) its views were made with, which a view mismatch names in its fix."""
    return library_versions() | {"torch_cpu_capability": torch.backends.cpu.get_cpu_capability()}


@contextmanager
def declared_store(
    declared: StoreDeclaration,
    store: str | StoreLocation,
    *,
    shard_samples: int | None,
    break_lock: bool,
    where: str = "",
) -> Iterator[tuple[StoreBuilder, list[ShardWork]]]:
    """The store created or opened under its writer lock, the teacher declared and the pending shard ranges
    planned: what every stage-one runner starts from. ``break_lock`` takes over a dead writer's lock."""
    location = store if isinstance(store, StoreLocation) else StoreLocation(store)
    with (
        io_errors(location, f"precomputing teacher {declared.name!r}{where}"),
        StoreLock(location, break_lock=break_lock),
    ):
        builder = open_builder(declared, location, shard_samples)
        work = plan_work(builder, declared.owner)
        log.info("%s: %d shard range(s) to write for teacher %r%s", location.url, len(work), declared.name, where)
        yield builder, work


def finalize(builder: StoreBuilder, owner: str) -> bool:
    """Merge the commit records of the sample arrays and of ``owner`` into the manifest in one publish; whether
    both are complete."""
    return builder.finalize(SAMPLES_OWNER, owner)


def make_report(
    builder: StoreBuilder, declared: StoreDeclaration, work: list[ShardWork], seconds: float, complete: bool
) -> PrecomputeReport:
    written = [w for w in work if declared.owner in w.owners]
    return PrecomputeReport(
        store=builder.location.url,
        teacher=declared.name,
        shards_written=len(written),
        shards_skipped=builder.manifest.num_shards() - len(written),
        samples_written=sum(w.stop - w.start for w in written),
        seconds=seconds,
        complete=complete,
        accuracy=builder.manifest.teachers[declared.name].accuracy,
    )
