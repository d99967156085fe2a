"""Stage one in this process: the teacher runs on this thread; a background writer thread checks, encodes and digests
every batch and commits each shard.

The teacher keeps computing while earlier batches are encoded and their shard written, digested and committed (a
bounded queue of :data:`QUEUE_BATCHES` batches): with one compute thread per core but one, the writer has a core of
its own. Committed shards are skipped when a run is repeated, so an interrupted run resumes at the first
uncommitted shard. Ctrl-C stops after the shards already handed to the writer are committed.
"""

from __future__ import annotations

import contextvars
import queue
import threading
import time
from collections.abc import Callable, Iterable
from typing import Any

from torch import nn
from tqdm.auto import tqdm

from kdcache.datasets.base import SampleDataset
from kdcache.precompute.engine import (
    PrecomputeReport,
    ShardWork,
    TeacherRun,
    declared_store,
    finalize,
    make_report,
)
from kdcache.precompute.fill import ShardFill, TeacherBatch
from kdcache.precompute.job import StageOneJob
from kdcache.registry import Factory
from kdcache.store import StoreBuilder, StoreLocation
from kdcache.targets import Target
from kdcache.views import Views

WriterItem = tuple[ShardFill, TeacherBatch | None]
"""What the teacher's thread hands the writer: a batch to add to a shard's fill, or ``None``: the shard is done."""

QUEUE_BATCHES = 4
"""Batches the teacher may run ahead of the writer: enough to cover a shard's commit, few enough that the queued
float32 values (and, on CUDA, device memory) stay a few batches' worth."""


class _ShardWriter:
    """A background thread that checks, encodes and digests each batch the teacher computed and commits every
    finished shard, in order; its first error is re-raised in the caller (and nothing after it is committed)."""

    def __init__(self, builder: StoreBuilder, depth: int = QUEUE_BATCHES) -> None:
        self.builder = builder
        self.queue: queue.Queue[WriterItem | None] = queue.Queue(depth)
        self.error: BaseException | None = None
        run = contextvars.copy_context().run  # its errors address the caller's speaker (kdcache.errors.say)
        self.thread = threading.Thread(target=run, args=(self._run,), name="kdcache-shard-writer", daemon=True)
        self.thread.start()

    def _run(self) -> None:
        while (item := self.queue.get()) is not None:
            if self.error is None:
                try:
                    self._handle(*item)
                except BaseException as exc:  # noqa: BLE001  (re-raised in the main thread by submit/close)
                    self.error = exc

    def _handle(self, fill: ShardFill, batch: TeacherBatch | None) -> None:
        if batch is not None:
            fill.add(batch)
            return
        for rows in fill.rows():
            self.builder.commit(*rows)

    def submit(self, item: WriterItem) -> None:
        self._raise()
        self.queue.put(item)

    def close(self) -> None:
        """Wait until everything submitted is committed (or failed), then surface a failure."""
        self.queue.put(None)
        self.thread.join()
        self._raise()

    def _raise(self) -> None:
        if self.error is not None:
            raise self.error


def run_local(
    job: StageOneJob,
    store: str | StoreLocation,
    *,
    shard_samples: int | None = None,
    progress: bool = True,
    break_lock: bool = False,
) -> PrecomputeReport:
    """Run ``job`` in this process into ``store``, holding the store's writer lock throughout; ``break_lock`` takes
    over the lock of a writer that died."""
    with TeacherRun(job) as run:
        declared = run.declaration()
        with declared_store(declared, store, shard_samples=shard_samples, break_lock=break_lock) as (builder, work):
            todo = sum(w.stop - w.start for w in work if run.owner in w.owners)
            start = time.perf_counter()
            complete = _write(run, builder, work, todo, progress)
            return make_report(builder, declared, work, time.perf_counter() - start, complete)


def _write(run: TeacherRun, builder: StoreBuilder, work: list[ShardWork], todo: int, progress: bool) -> bool:
    """Compute every shard range of ``work`` and commit it from the writer thread; whether the store is complete."""
    bar = tqdm(total=todo, unit="sample", desc=f"precompute {run.name}", disable=not progress)
    try:
        return write_batches(run, builder, work, run.batches, bar.update)
    finally:
        bar.close()


def write_batches(
    run: TeacherRun,
    builder: StoreBuilder,
    work: list[ShardWork],
    batches: Callable[[ShardWork], Iterable[TeacherBatch]],
    progress: Callable[[int], object],
) -> bool:
    """Hand every batch of every shard range of ``work`` (``batches(item)``, on this thread) to the writer thread,
    which commits each shard, then publish; whether the store is complete. ``progress`` gets samples done.

    The writer path of stage one: a run's batches are its teacher's forward passes (:meth:`TeacherRun.batches`);
    ``kdcache.tools.bench.writes`` hands it batches made beforehand, to time everything after the teacher."""
    writer = _ShardWriter(builder)
    try:
        for item in work:
            fill = ShardFill(run, item, builder)
            for batch in batches(item):
                writer.submit((fill, batch))
                progress(len(batch.samples) // run.views.count)
            writer.submit((fill, None))
    finally:
        try:
            writer.close()
        finally:
            complete = finalize(builder, run.owner)
    return complete


def precompute(
    teacher: nn.Module | Factory,
    dataset: SampleDataset | Factory,
    store: str | StoreLocation,
    *,
    targets: list[Target],
    views: Views,
    num_classes: int | None = None,
    teacher_name: str = "teacher",
    teacher_spec: dict[str, Any] | None = None,
    batch_size: int = 256,
    shard_samples: int | None = None,
    device: str = "cpu",
    ignore_index: int = -100,
    progress: bool = True,
    break_lock: bool = False,
    allow_tokenizer_mismatch: bool = False,
    store_tokens: bool = False,
) -> PrecomputeReport:
    """Cache ``teacher``'s ``targets`` for every sample (and view) of ``dataset`` into ``store``, in this process.

    ``teacher`` and ``dataset`` are objects or :class:`~kdcache.registry.Factory` import paths. A store that
    already holds other teachers gains ``teachers/<teacher_name>``; their shards are not touched. A language-model
    teacher may be a raw ``transformers`` model (its ``.logits`` are read); one whose directory ships a tokenizer
    other than the data's is refused unless ``allow_tokenizer_mismatch`` (:mod:`kdcache.precompute.tokens`).
    ``store_tokens`` also stores a token dataset's sequences (``samples/tokens``, ``labels``, ``lengths``), so
    stage two needs neither the corpus nor the tokenizer (:class:`kdcache.train.StoredTokens`).

    >>> precompute(teacher, train_set, "runs/x/train.zarr", targets=[build_target("logits", {})],
    ...            views=ViewTransform(count=1, seed=0, mean=(0.3,), std=(0.37,)), num_classes=10)  # doctest: +SKIP
    """
    job = StageOneJob(
        teacher=teacher,
        dataset=dataset,
        targets=tuple(targets),
        views=views,
        num_classes=num_classes,
        teacher_name=teacher_name,
        teacher_spec=teacher_spec,
        batch_size=batch_size,
        device=str(device),
        ignore_index=ignore_index,
        allow_tokenizer_mismatch=allow_tokenizer_mismatch,
        store_tokens=store_tokens,
    )
    return run_local(job, store, shard_samples=shard_samples, progress=progress, break_lock=break_lock)
