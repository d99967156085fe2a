"""Stage one's per-shard step: run a frozen teacher over a shard range and return the rows of every array.

Work is planned in whole shards (:class:`ShardWork`). :meth:`TeacherRun.compute` is the one per-shard step, shared
by the single-process writer (:mod:`kdcache.precompute.local`) and dask tasks (:mod:`kdcache.precompute.dask`).
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
from kdcache.errors import ConfigError, ViewMismatchError
from kdcache.metrics import Accuracy
from kdcache.models.fingerprint import teacher_fingerprint
from kdcache.precompute.job import StageOneJob
from kdcache.precompute.samples import SampleFacts, pairs, read_facts, sample_arrays, sample_rows
from kdcache.precompute.tokens import check_teacher_tokens
from kdcache.store import (
    SAMPLES_OWNER,
    VIEW_DIGEST,
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

ShardRows = tuple[str, int, dict[str, np.ndarray], dict[str, float]]
"""``(owner, shard index, rows by array path, stats)``: the arguments of :meth:`StoreBuilder.commit`."""


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
    holds the latest batch's activations.
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
        """What this run declares in its store (see :func:`open_store`)."""
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
        """The rows to commit for one shard range, for each owner in ``work.owners``: the per-shard step of stage
        one, shared by the single-process writer and dask tasks. ``progress`` is called with samples done.

        A teacher joining a store whose sample arrays are committed already (another teacher's run) must have been
        given the inputs those arrays record: its view digests are compared with the store's before its rows are
        returned, so two teachers of one store are proven to have seen the same inputs."""
        rows: list[ShardRows] = []
        facts = None
        if self.owner in work.owners:
            data, stats, facts = self._fill_shard(work.start, work.stop, progress)
            if SAMPLES_OWNER not in work.owners:
                self._require_store_inputs(facts, builder.committed_rows(VIEW_DIGEST, work.index), work, builder)
            rows.append((self.owner, work.index, data, stats))
        if SAMPLES_OWNER in work.owners:
            if facts is None:  # the teacher's shard is committed already: read the samples once more
                facts = read_facts(self.dataset, self.views, work.start, work.stop, self.job.batch_size)
            sample = sample_rows(self.dataset, self.sample_arrays, work.start, work.stop, facts)
            rows.append((SAMPLES_OWNER, work.index, sample, {}))
        return rows

    def _require_store_inputs(
        self, facts: SampleFacts, stored: np.ndarray, work: ShardWork, builder: StoreBuilder
    ) -> None:
        bad = np.argwhere((facts.inputs != stored).any(axis=2))
        if len(bad):
            pairs = [(int(work.start + i), int(v)) for i, v in bad[:8]]
            raise ViewMismatchError(
                f"store {builder.location.url!r}: teacher {self.name!r} was given other inputs than the store's other "
                f"teacher(s) for (sample, view) {pairs} ({len(bad)} in shard {work.index}; samples/view_digest): "
                "its views replay differently here (another machine's CPU kernels, other library versions, or a "
                "step with its own random source). Run it where the store was built, or build a new store"
            )

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

    def _fill_shard(
        self, lo: int, hi: int, progress: Callable[[int], object] | None
    ) -> tuple[dict[str, np.ndarray], dict[str, float], SampleFacts]:
        """Run the teacher over shard ``[lo, hi)``; every array's rows for it, accuracy counts, and the facts of every
        sample (content digest, each view's input digest and numbers) from the same reads: the data is read once."""
        v = self.views.count
        buffers = {
            spec.path: np.empty(spec.shape(hi - lo), dtype=spec.dtype)
            for layout in self.layouts.values()
            for spec in layout.arrays.values()
        }
        facts = SampleFacts.empty(hi - lo, self.views)
        samples, view_ids = pairs(lo, hi, v)
        accuracy = Accuracy(self.job.ignore_index)
        step = max(1, self.job.batch_size // v) * v  # whole samples per batch, so rows of the buffers stay aligned
        for b in range(0, len(samples), step):
            s, vid = samples[b : b + step], view_ids[b : b + step]
            made, logits, values = self._forward(s, vid)
            accuracy.update(logits, made.labels.to(logits.device))
            rows = slice(b // v, (b + len(s)) // v)
            facts.record(b // v, made, vid)
            for target in self.targets:
                value = values[target.name]
                target.check(value, s)
                for rel, array in target.encode_at(value, s, vid, labels=made.labels).items():
                    path = self.layouts[target.name].arrays[rel].path
                    buffers[path][rows] = array.reshape(len(s) // v, v, *array.shape[1:])
            if progress is not None:
                progress(len(s) // v)
        return buffers, {"correct": float(accuracy.correct), "count": float(accuracy.count)}, facts


def target_layout(target: Target, teacher: str, value_shape: tuple[int, ...], views: int) -> TargetLayout:
    """How ``target`` of ``teacher`` is stored for values of ``value_shape``: its arrays, with their attributes."""
    arrays = {
        rel: ArraySpec(teacher_path(teacher, rel), a.sample_shape, a.dtype, a.compressor, views=views, attributes=attrs)
        for rel, (a, attrs) in target.stored_arrays(teacher, value_shape).items()
    }
    return TargetLayout(target.kind, target.describe(), arrays, value_shape)


def open_store(declared: StoreDeclaration, location: StoreLocation, shard_samples: int | None) -> StoreBuilder:
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
        builder = open_store(declared, location, shard_samples)
        work = plan_work(builder, declared.owner)
        log.info("%s: %d shard range(s) to write for teacher %r%s", location.url, len(work), declared.name, where)
        yield builder, work


def finalize(builder: StoreBuilder, owner: str) -> bool:
    """Merge the commit records of the sample arrays and of ``owner`` into the manifest (``complete`` last)."""
    builder.finalize(SAMPLES_OWNER)
    return builder.finalize(owner)


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
