"""Stage one in this process: compute each pending shard and commit it from a background writer thread.

The teacher keeps computing while the previous shard is encoded, written, digested and committed (a bounded queue
of two shards). Committed shards are skipped when a run is repeated, so an interrupted run resumes at the first
uncommitted shard. Ctrl-C stops after the shards already handed to the writer are committed.
"""

from __future__ import annotations

import queue
import threading
import time
from typing import Any

from torch import nn
from tqdm.auto import tqdm

from kdcache.datasets.base import SampleDataset
from kdcache.precompute.engine import (
    PrecomputeReport,
    ShardRows,
    ShardWork,
    TeacherRun,
    declared_store,
    finalize,
    make_report,
)
from kdcache.precompute.job import StageOneJob
from kdcache.registry import Factory
from kdcache.store import StoreBuilder, StoreLocation
from kdcache.targets import Target
from kdcache.views import ViewTransform


class _ShardWriter:
    """A background thread that commits finished shards in order; its first error is re-raised in the caller."""

    def __init__(self, builder: StoreBuilder, depth: int = 2) -> None:
        self.builder = builder
        self.queue: queue.Queue[ShardRows | None] = queue.Queue(depth)
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

    def submit(self, rows: ShardRows) -> None:
        self._raise()
        self.queue.put(rows)

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
    writer = _ShardWriter(builder)
    bar = tqdm(total=todo, unit="sample", desc=f"precompute {run.name}", disable=not progress)
    try:
        for item in work:
            for rows in run.compute(item, builder, bar.update):
                writer.submit(rows)
    finally:
        bar.close()
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
    views: ViewTransform,
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
    job = StageOneJob(teacher, dataset, tuple(targets), views, num_classes, teacher_name, teacher_spec, batch_size,
                      str(device), ignore_index, allow_tokenizer_mismatch, store_tokens)  # fmt: skip
    return run_local(job, store, shard_samples=shard_samples, progress=progress, break_lock=break_lock)
