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

from kdcache.datasets.base import SampleDataset
from kdcache.datasets.fingerprint import dataset_fingerprint
from kdcache.metrics import Accuracy
from kdcache.models.fingerprint import teacher_fingerprint
from kdcache.precompute.job import StageOneJob
from kdcache.store import (
    SAMPLES_OWNER,
    VIEW_PARAMS,
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
from kdcache.targets import TargetExtractor
from kdcache.views import ViewTransform

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
        self.targets = list(job.targets)
        self.views = job.views
        self.num_classes = job.num_classes
        self.extract = TargetExtractor(teacher, self.targets, job.torch_device)
        self.layouts = self._trace_layouts()
        self.fingerprint = teacher_fingerprint(teacher, spec=job.spec(teacher), layers=self.extract.layers)
        self.sample_arrays = _sample_arrays(self.dataset, self.views)

    def close(self) -> None:
        self.extract.close()

    def __enter__(self) -> TeacherRun:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def dataset_fingerprint(self) -> dict[str, Any]:
        return dataset_fingerprint(self.dataset, num_classes=self.num_classes)

    def open_store(self, location: StoreLocation, shard_samples: int | None = None) -> StoreBuilder:
        """Create (or open and check) the store for this dataset and views, and declare this teacher in it.

        Without ``shard_samples`` an existing store keeps its shard size (a second teacher joins the first one's
        shard ranges) and a new store gets :func:`plan_shard_samples`'s choice.
        """
        n = len(self.dataset)
        if shard_samples is None:
            if location.exists("kdcache.manifest.json"):
                shard_samples = read_manifest(location).shard_samples
            else:
                sizes = [spec.bytes_per_sample for layout in self.layouts.values() for spec in layout.arrays.values()]
                shard_samples = plan_shard_samples(sizes, n)
        builder = StoreBuilder.create_or_open(
            location,
            num_samples=n,
            shard_samples=shard_samples,
            dataset=self.dataset_fingerprint(),
            views=self.views.spec(),
            sample_arrays=self.sample_arrays,
            library=library_versions(),
        )
        builder.add_teacher(self.name, self.fingerprint, self.layouts)
        return builder

    def compute(self, work: ShardWork, progress: Callable[[int], object] | None = None) -> list[ShardRows]:
        """The rows to commit for one shard range, for each owner in ``work.owners``: the per-shard step of stage
        one, shared by the single-process writer and dask tasks. ``progress`` is called with samples done."""
        rows: list[ShardRows] = []
        if self.owner in work.owners:
            data, stats = self._fill_shard(work.start, work.stop, progress)
            rows.append((self.owner, work.index, data, stats))
        if SAMPLES_OWNER in work.owners:
            rows.append((SAMPLES_OWNER, work.index, self._sample_rows(work), {}))
        return rows

    def _sample_rows(self, work: ShardWork) -> dict[str, np.ndarray]:
        return _sample_rows(self.dataset, self.views, self.sample_arrays, work.start, work.stop)

    def _trace_layouts(self) -> dict[str, TargetLayout]:
        """Run one tiny batch to learn each target's per-sample shape, then lay out its arrays."""
        samples, view_ids = _pairs(0, min(2, len(self.dataset)), 1)
        _, _, values = self._forward(samples, view_ids)
        layouts: dict[str, TargetLayout] = {}
        for target in self.targets:
            if target.name in layouts:
                raise ValueError(f"target {target.name!r} is listed twice; list each target once")
            stored = target.layout(tuple(values[target.name].shape[1:]))
            layouts[target.name] = TargetLayout(
                kind=target.kind,
                params=target.describe(),
                arrays={
                    rel: ArraySpec(
                        teacher_path(self.name, rel), a.sample_shape, a.dtype, a.compressor, views=self.views.count
                    )
                    for rel, a in stored.items()
                },
            )
        return layouts

    def _forward(
        self, samples: np.ndarray, view_ids: np.ndarray
    ) -> tuple[torch.Tensor, torch.Tensor, dict[str, torch.Tensor]]:
        """Labels, logits and every target's value for the given (sample, view) pairs."""
        raw, labels = self.dataset.get_batch(samples)
        logits, values = self.extract(self.views(raw, samples, view_ids))
        return labels, logits, values

    def _fill_shard(
        self, lo: int, hi: int, progress: Callable[[int], object] | None
    ) -> tuple[dict[str, np.ndarray], dict[str, float]]:
        """Run the teacher over shard ``[lo, hi)`` and return every array's rows for it plus accuracy counts."""
        v = self.views.count
        buffers = {
            spec.path: np.empty(spec.shape(hi - lo), dtype=spec.dtype)
            for layout in self.layouts.values()
            for spec in layout.arrays.values()
        }
        samples, view_ids = _pairs(lo, hi, v)
        accuracy = Accuracy(self.job.ignore_index)
        step = max(1, self.job.batch_size // v) * v  # whole samples per batch, so rows of the buffers stay aligned
        for b in range(0, len(samples), step):
            s, vid = samples[b : b + step], view_ids[b : b + step]
            labels, logits, values = self._forward(s, vid)
            accuracy.update(logits, labels.to(logits.device))
            rows = slice(b // v, (b + len(s)) // v)
            for target in self.targets:
                value = values[target.name]
                target.check(value, s)
                for rel, array in target.encode_at(value, s, vid).items():
                    path = self.layouts[target.name].arrays[rel].path
                    buffers[path][rows] = array.reshape(len(s) // v, v, *array.shape[1:])
            if progress is not None:
                progress(len(s) // v)
        return buffers, {"correct": float(accuracy.correct), "count": float(accuracy.count)}


@contextmanager
def opened_run(
    job: StageOneJob, store: str | StoreLocation, *, shard_samples: int | None, break_lock: bool, where: str = ""
) -> Iterator[tuple[TeacherRun, StoreBuilder, list[ShardWork]]]:
    """The job built, the store created or opened under its writer lock, the teacher declared and the pending shard
    ranges planned: what every stage-one runner starts from. ``break_lock`` takes over a dead writer's lock."""
    location = store if isinstance(store, StoreLocation) else StoreLocation(store)
    with (
        TeacherRun(job) as run,
        io_errors(location, f"precomputing teacher {job.teacher_name!r}{where}"),
        StoreLock(location, break_lock=break_lock),
    ):
        builder = run.open_store(location, shard_samples)
        work = plan_work(builder, run.owner)
        log.info("%s: %d shard range(s) to write for teacher %r%s", location.url, len(work), run.name, where)
        yield run, builder, work


def finalize(builder: StoreBuilder, owner: str) -> bool:
    """Merge the commit records of the sample arrays and of ``owner`` into the manifest (``complete`` last)."""
    builder.finalize(SAMPLES_OWNER)
    return builder.finalize(owner)


def make_report(
    builder: StoreBuilder, run: TeacherRun, work: list[ShardWork], seconds: float, complete: bool
) -> PrecomputeReport:
    written = [w for w in work if run.owner in w.owners]
    return PrecomputeReport(
        store=builder.location.url,
        teacher=run.name,
        shards_written=len(written),
        shards_skipped=builder.manifest.num_shards() - len(written),
        samples_written=sum(w.stop - w.start for w in written),
        seconds=seconds,
        complete=complete,
        accuracy=builder.manifest.teachers[run.name].accuracy,
    )


def _pairs(lo: int, hi: int, count: int) -> tuple[np.ndarray, np.ndarray]:
    """All (sample, view) pairs of a range, sample-major, as two index arrays."""
    samples = np.repeat(np.arange(lo, hi, dtype=np.int64), count)
    views = np.tile(np.arange(count, dtype=np.int64), hi - lo)
    return samples, views


def _sample_arrays(dataset: SampleDataset, views: ViewTransform) -> list[ArraySpec]:
    """Per-sample arrays: the index, the label (classification) and, when the store holds augmented views (V > 1
    with augmentation ops), every view's drawn numbers (zstd: they are small integers and repeated factors)."""
    specs = [ArraySpec("samples/index", (), "int64")]
    if dataset.all_labels().ndim == 1:
        specs.append(ArraySpec("samples/label", (), "int64"))
    if views.augment and views.count > 1:
        specs.append(ArraySpec(VIEW_PARAMS, (len(views.param_names),), "float32", "zstd", views=views.count))
    return specs


def _sample_rows(
    dataset: SampleDataset, views: ViewTransform, specs: list[ArraySpec], lo: int, hi: int
) -> dict[str, np.ndarray]:
    rows = {"samples/index": np.arange(lo, hi, dtype=np.int64)}
    paths = {s.path for s in specs}
    if "samples/label" in paths:
        rows["samples/label"] = dataset.all_labels()[lo:hi].astype(np.int64)
    if VIEW_PARAMS in paths:
        samples, view_ids = _pairs(lo, hi, views.count)
        size = tuple(dataset.get_batch(np.arange(1))[0].shape[-2:])
        rows[VIEW_PARAMS] = views.params(samples, view_ids, size).reshape(hi - lo, views.count, -1)
    return rows
