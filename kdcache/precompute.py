"""Stage one: run a frozen teacher once over a dataset and write its targets into a sharded store.

Work is planned in whole shards. The teacher fills one shard's buffers batch by batch; a finished shard goes to a
background writer thread (bounded queue), so the teacher keeps computing while the previous shard is encoded,
written, digested and committed. Committed shards are skipped when a run is repeated, so an interrupted run
resumes at the first uncommitted shard. Ctrl-C stops after the shards already handed to the writer are committed.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from kdcache.capture import LayerCapture, forward_with_capture
from kdcache.datasets.base import SampleDataset
from kdcache.fingerprint import dataset_fingerprint, teacher_fingerprint
from kdcache.metrics import Accuracy
from kdcache.store.layout import (
    SAMPLES_OWNER,
    VIEW_PARAMS,
    ArraySpec,
    owner_of_teacher,
    plan_shard_samples,
    shard_ranges,
    teacher_path,
)
from kdcache.store.location import StoreLocation
from kdcache.store.writer import StoreBuilder, TargetLayout
from kdcache.targets.base import Target
from kdcache.versions import library_versions
from kdcache.views import ViewTransform

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


class _ShardWriter:
    """A background thread that commits finished shards in order; its first error is re-raised in the caller."""

    def __init__(self, builder: StoreBuilder, depth: int = 2) -> None:
        self.builder = builder
        self.queue: queue.Queue[tuple[str, int, dict[str, np.ndarray], dict[str, float]] | None] = queue.Queue(depth)
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._run, name="kdcache-shard-writer", daemon=True)
        self.thread.start()

    def _run(self) -> None:
        while (item := self.queue.get()) is not None:
            if self.error is None:
                try:
                    self.builder.commit(*item)
                except BaseException as exc:  # re-raised in the main thread by submit/close
                    self.error = exc

    def submit(self, owner: str, index: int, data: dict[str, np.ndarray], stats: dict[str, float]) -> None:
        self._raise()
        self.queue.put((owner, index, data, stats))

    def close(self) -> None:
        """Wait until everything submitted is committed (or failed), then surface a failure."""
        self.queue.put(None)
        self.thread.join()
        self._raise()

    def _raise(self) -> None:
        if self.error is not None:
            raise self.error


def precompute(
    teacher: nn.Module,
    dataset: SampleDataset,
    store: str | StoreLocation,
    *,
    targets: list[Target],
    views: ViewTransform,
    num_classes: int,
    teacher_name: str = "teacher",
    teacher_spec: dict[str, Any] | None = None,
    batch_size: int = 256,
    shard_samples: int | None = None,
    device: str | torch.device = "cpu",
    ignore_index: int = -100,
    progress: bool = True,
) -> PrecomputeReport:
    """Cache ``teacher``'s ``targets`` for every sample (and view) of ``dataset`` into ``store``.

    >>> precompute(teacher, train_set, "runs/x/train.zarr", targets=[build_target("logits", {})],
    ...            views=ViewTransform(count=1, seed=0, mean=(0.3,), std=(0.37,)), num_classes=10)  # doctest: +SKIP
    """
    location = store if isinstance(store, StoreLocation) else StoreLocation(store)
    device = torch.device(device)
    teacher = teacher.eval().to(device)
    layers = sorted({layer for t in targets for layer in t.teacher_layers()})
    n = len(dataset)
    with LayerCapture(teacher, layers) as capture:
        layouts = _trace_layouts(teacher, capture, dataset, views, targets, teacher_name, device)
        sample_arrays = _sample_arrays(dataset, views)
        sizes = [spec.bytes_per_sample for layout in layouts.values() for spec in layout.arrays.values()]
        builder = StoreBuilder.create_or_open(
            location,
            num_samples=n,
            shard_samples=shard_samples or plan_shard_samples(sizes, n),
            dataset=dataset_fingerprint(dataset, num_classes=num_classes),
            views=views.spec(),
            sample_arrays=sample_arrays,
            library=library_versions(),
        )
        fingerprint = teacher_fingerprint(
            teacher, spec=teacher_spec or {"class": type(teacher).__name__}, layers=layers
        )
        builder.add_teacher(teacher_name, fingerprint, layouts)
        owner = owner_of_teacher(teacher_name)
        pending = builder.pending_shards(owner)
        pending_samples = set(builder.pending_shards(SAMPLES_OWNER))
        ranges = shard_ranges(n, builder.manifest.shard_samples)
        todo = sum(ranges[k][1] - ranges[k][0] for k in pending)
        log.info("%s: %d of %d shards to write for teacher %r", location.url, len(pending), len(ranges), teacher_name)

        writer = _ShardWriter(builder)
        start = time.perf_counter()
        written = 0
        bar = tqdm(total=todo, unit="sample", desc=f"precompute {teacher_name}", disable=not progress)
        try:
            for k in pending:
                lo, hi = ranges[k]
                data, stats = _fill_shard(
                    teacher, capture, dataset, views, targets, layouts, lo, hi, batch_size, device, ignore_index, bar
                )
                writer.submit(owner, k, data, stats)
                if k in pending_samples:
                    writer.submit(SAMPLES_OWNER, k, _sample_rows(dataset, views, sample_arrays, lo, hi), {})
                    pending_samples.discard(k)
                written += hi - lo
            for k in sorted(pending_samples):  # a second teacher added later finds these already committed
                lo, hi = ranges[k]
                writer.submit(SAMPLES_OWNER, k, _sample_rows(dataset, views, sample_arrays, lo, hi), {})
        finally:
            bar.close()
            try:
                writer.close()
            finally:
                builder.finalize(SAMPLES_OWNER)
                complete = builder.finalize(owner)
    seconds = time.perf_counter() - start
    return PrecomputeReport(
        store=location.url,
        teacher=teacher_name,
        shards_written=len(pending),
        shards_skipped=len(ranges) - len(pending),
        samples_written=written,
        seconds=seconds,
        complete=complete,
        accuracy=builder.manifest.teachers[teacher_name].accuracy,
    )


@torch.no_grad()
def teacher_outputs(
    teacher: nn.Module, capture: LayerCapture | None, inputs: torch.Tensor, targets: list[Target]
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Logits and every target's float32 value for one batch of model inputs (also used for live teachers)."""
    outputs = forward_with_capture(teacher, inputs, capture)
    return outputs.logits, {t.name: t.extract(outputs) for t in targets}


def _pairs(lo: int, hi: int, count: int) -> tuple[np.ndarray, np.ndarray]:
    """All (sample, view) pairs of a range, sample-major, as two index arrays."""
    samples = np.repeat(np.arange(lo, hi, dtype=np.int64), count)
    views = np.tile(np.arange(count, dtype=np.int64), hi - lo)
    return samples, views


def _model_inputs(
    dataset: SampleDataset, views: ViewTransform, samples: np.ndarray, view_ids: np.ndarray, device: torch.device
) -> tuple[torch.Tensor, torch.Tensor]:
    raw, labels = dataset.get_batch(samples)
    return views(raw, samples, view_ids).to(device), labels


def _trace_layouts(
    teacher: nn.Module,
    capture: LayerCapture,
    dataset: SampleDataset,
    views: ViewTransform,
    targets: list[Target],
    teacher_name: str,
    device: torch.device,
) -> dict[str, TargetLayout]:
    """Run one tiny batch to learn each target's per-sample shape, then lay out its arrays."""
    samples, view_ids = _pairs(0, min(2, len(dataset)), 1)
    inputs, _ = _model_inputs(dataset, views, samples, view_ids, device)
    _, values = teacher_outputs(teacher, capture, inputs, targets)
    layouts: dict[str, TargetLayout] = {}
    for target in targets:
        if target.name in layouts:
            raise ValueError(f"target {target.name!r} is listed twice; list each target once")
        stored = target.layout(tuple(values[target.name].shape[1:]))
        layouts[target.name] = TargetLayout(
            kind=target.kind,
            params=target.describe(),
            arrays={
                rel: ArraySpec(
                    teacher_path(teacher_name, rel), a.sample_shape, a.dtype, a.compressor, views=views.count
                )
                for rel, a in stored.items()
            },
        )
    return layouts


def _fill_shard(
    teacher: nn.Module,
    capture: LayerCapture,
    dataset: SampleDataset,
    views: ViewTransform,
    targets: list[Target],
    layouts: dict[str, TargetLayout],
    lo: int,
    hi: int,
    batch_size: int,
    device: torch.device,
    ignore_index: int,
    bar: tqdm,
) -> tuple[dict[str, np.ndarray], dict[str, float]]:
    """Run the teacher over shard ``[lo, hi)`` and return every array's rows for it plus accuracy counts."""
    v = views.count
    buffers = {
        spec.path: np.empty(spec.shape(hi - lo), dtype=spec.dtype)
        for layout in layouts.values()
        for spec in layout.arrays.values()
    }
    samples, view_ids = _pairs(lo, hi, v)
    accuracy = Accuracy(ignore_index)
    step = max(1, batch_size // v) * v  # whole samples per batch, so rows of the buffers stay aligned
    for b in range(0, len(samples), step):
        s, vid = samples[b : b + step], view_ids[b : b + step]
        inputs, labels = _model_inputs(dataset, views, s, vid, device)
        logits, values = teacher_outputs(teacher, capture, inputs, targets)
        accuracy.update(logits, labels.to(device))
        rows = slice(b // v, (b + len(s)) // v)
        for target in targets:
            value = values[target.name]
            target.check(value, s)
            for rel, array in target.encode(value).items():
                path = layouts[target.name].arrays[rel].path
                buffers[path][rows] = array.reshape(len(s) // v, v, *array.shape[1:])
        bar.update(len(s) // v)
    return buffers, {"correct": float(accuracy.correct), "count": float(accuracy.count)}


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
