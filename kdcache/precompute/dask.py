"""Stage one on dask.distributed: one task per shard range, the teacher loaded once per worker (DESIGN.md §4).

One worker builds the job first and returns its :class:`~kdcache.precompute.engine.StoreDeclaration` (the
teacher's and the dataset's fingerprints, the arrays of every target); the coordinator (the calling process) opens
the store with it under the writer lock, declares the teacher and plans the shard ranges still missing
(:func:`~kdcache.precompute.engine.plan_work`, so a re-run resumes). The coordinator never builds the teacher or the
dataset, so it needs none of their code. The job travels to each worker once (``Client.scatter``); a worker builds
one :class:`~kdcache.precompute.engine.TeacherRun` per job, checks that its teacher and dataset have the declared
fingerprints, computes its ranges with the same per-shard step as the single-process writer and commits them with
:meth:`StoreBuilder.commit`, which writes the shard, digests it and writes its own small commit record. A commit is
idempotent (same bytes, same record), so a task that dask runs twice does no harm. The coordinator merges the
records and publishes ``complete`` last, which makes the store byte-identical to a single-process run.

A job whose teacher and dataset are :class:`~kdcache.registry.Factory` import paths carries only those paths and
their arguments, so workers started anywhere rebuild them from code installed there (``PYTHONPATH``). A job holding
objects pickles them once per worker. Credentials never travel: a remote store's come from each worker's
environment (``StoreLocation`` drops credential options when pickled).
"""

from __future__ import annotations

import contextlib
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from torch import nn
from tqdm.auto import tqdm

from kdcache.datasets.base import SampleDataset
from kdcache.errors import Speaker, StoreMismatchError, current_speaker, speaking
from kdcache.fingerprint import canonical_digest
from kdcache.precompute.cluster import check_cluster, dask_client
from kdcache.precompute.engine import (
    PrecomputeReport,
    ShardWork,
    StoreDeclaration,
    TeacherRun,
    declared_store,
    finalize,
    make_report,
)
from kdcache.precompute.job import StageOneJob
from kdcache.registry import Factory
from kdcache.store import StoreBuilder, StoreLocation, read_manifest
from kdcache.targets import Target
from kdcache.views import Views

if TYPE_CHECKING:
    from distributed import Client


@dataclass(frozen=True)
class WorkerRecipe:
    """What every worker needs: the job, the store, the fingerprints the job must reproduce there, and whom the
    worker's error messages address (the coordinator's :func:`~kdcache.errors.current_speaker`)."""

    job: StageOneJob
    location: StoreLocation
    teacher_digest: str
    dataset_digest: str
    speaker: Speaker = "python"

    @property
    def key(self) -> str:
        """Identity of the run a worker keeps loaded: the store and what the teacher and dataset hash to."""
        return canonical_digest(
            {
                "store": self.location.url,
                "teacher": self.teacher_digest,
                "dataset": self.dataset_digest,
                "name": self.job.teacher_name,
                "views": self.job.views.spec()["digest"],
                "targets": [t.describe() | {"kind": t.kind} for t in self.job.targets],
            }
        )


@dataclass
class _WorkerState:
    key: str
    run: TeacherRun
    location: StoreLocation
    lock: threading.Lock = field(default_factory=threading.Lock)
    _builder: StoreBuilder | None = None

    @property
    def builder(self) -> StoreBuilder:
        """The store's builder, opened at the first commit (a declaring worker runs before the store exists)."""
        if self._builder is None:
            self._builder = StoreBuilder(self.location, read_manifest(self.location))
        return self._builder


_STATE: dict[str, _WorkerState] = {}  # per worker process: the latest recipe's run (one teacher held at a time)
_STATE_LOCK = threading.Lock()


def _worker_state(recipe: WorkerRecipe) -> _WorkerState:
    """This worker's run for ``recipe``, building the teacher and dataset the first time (once per worker)."""
    with _STATE_LOCK, speaking(recipe.speaker):
        state = _STATE.get(recipe.key)
        if state is None:
            run = TeacherRun(recipe.job)
            _require_same_inputs(recipe, run)
            state = _keep(recipe, run)
        return state


def _keep(recipe: WorkerRecipe, run: TeacherRun) -> _WorkerState:
    """Hold ``run`` as this worker's run for ``recipe`` (closing the one held before); call with the lock held."""
    for old in _STATE.values():
        old.run.close()
    _STATE.clear()
    state = _STATE[recipe.key] = _WorkerState(recipe.key, run, recipe.location)
    return state


def _require_same_inputs(recipe: WorkerRecipe, run: TeacherRun) -> None:
    found = {"teacher": run.fingerprint["digest"], "dataset": run.dataset_fingerprint()["digest"]}
    expected = {"teacher": recipe.teacher_digest, "dataset": recipe.dataset_digest}
    differ = [k for k in expected if found[k] != expected[k]]
    if differ:
        job = recipe.job
        origin = {
            "teacher": job.teacher.describe() if isinstance(job.teacher, Factory) else type(job.teacher).__name__,
            "dataset": job.dataset.describe() if isinstance(job.dataset, Factory) else run.dataset.describe(),
        }
        raise StoreMismatchError(
            f"dask workers built a different {' and '.join(differ)} from the same job "
            f"({'; '.join(f'{k}: {origin[k]}' for k in differ)}). Start workers where the same code, checkpoints "
            "and data files are found (same relative paths from their working directory, or absolute ones)"
        )


def run_shard(recipe: WorkerRecipe, work: ShardWork) -> int:
    """A dask task: compute and commit one shard range; returns the teacher samples it wrote (for progress)."""
    state = _worker_state(recipe)
    with state.lock, speaking(recipe.speaker):  # one shard at a time per worker: layer capture is not thread-safe
        for rows in state.run.compute(work, state.builder):
            state.builder.commit(*rows)
    return work.stop - work.start if state.run.owner in work.owners else 0


def run_on_dask(
    job: StageOneJob,
    store: str | StoreLocation,
    *,
    shard_samples: int | None = None,
    workers: int | None = None,
    scheduler: str | None = None,
    client: Client | None = None,
    progress: bool = True,
    break_lock: bool = False,
) -> PrecomputeReport:
    """Run ``job`` on dask into ``store``: on ``client``, a new LocalCluster of ``workers`` one-thread processes, or
    the cluster at ``scheduler`` (exactly one of the three). A worker builds the job first and returns what it
    declares in the store (:func:`declare`), so this process never imports the teacher's or the dataset's code."""
    if client is None:
        check_cluster(workers, scheduler)
    location = store if isinstance(store, StoreLocation) else StoreLocation(store)
    with _connected(client, workers, scheduler) as connected:
        speaker = current_speaker()
        declared = connected.submit(declare, job, location, speaker, pure=False).result()
        opened = declared_store(
            declared, location, shard_samples=shard_samples, break_lock=break_lock, where=" on dask"
        )
        with opened as (builder, work):
            recipe = WorkerRecipe(job, location, declared.fingerprint["digest"], declared.dataset["digest"], speaker)
            seconds = 0.0
            try:
                if work:
                    seconds = _run_all(connected, recipe, work, declared, progress)
            finally:
                complete = finalize(builder, declared.owner)
            return make_report(builder, declared, work, seconds, complete)


def declare(job: StageOneJob, location: StoreLocation, speaker: Speaker = "python") -> StoreDeclaration:
    """A dask task: build ``job`` on a worker and return what it declares in the store (fingerprints, layouts),
    its errors addressed to ``speaker``. The worker keeps the run for the shard tasks it gets next (the teacher is
    built once per worker)."""
    with speaking(speaker):
        run = TeacherRun(job)
        declared = run.declaration()
    recipe = WorkerRecipe(job, location, declared.fingerprint["digest"], declared.dataset["digest"], speaker)
    with _STATE_LOCK:
        _keep(recipe, run)
    return declared


@contextlib.contextmanager
def _connected(client: Client | None, workers: int | None, scheduler: str | None) -> Iterator[Client]:
    if client is not None:
        yield client
        return
    with dask_client(workers=workers, scheduler=scheduler) as made:
        yield made


def _run_all(
    client: Client, recipe: WorkerRecipe, work: list[ShardWork], run: StoreDeclaration, progress: bool
) -> float:
    """Submit one task per shard range and wait for all; the first failure cancels the rest and is re-raised.
    Returns the seconds from submission to the last commit (cluster start-up not included)."""
    from distributed import as_completed

    start = time.perf_counter()
    todo = sum(w.stop - w.start for w in work if run.owner in w.owners)
    shipped = client.scatter(recipe, broadcast=True, hash=False)  # the job reaches each worker once
    prefix = f"kdcache-{run.name}-{uuid.uuid4().hex[:8]}-shard"  # fresh per run: never a stale result by key
    futures = [client.submit(run_shard, shipped, w, key=f"{prefix}-{w.index}", pure=False) for w in work]
    bar = tqdm(total=todo, unit="sample", desc=f"precompute {run.name} (dask)", disable=not progress)
    try:
        for future in as_completed(futures):
            bar.update(future.result())
    finally:
        bar.close()
        client.cancel([*futures, shipped])
    return time.perf_counter() - start


def precompute_on_dask(
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
    workers: int | None = None,
    scheduler: str | None = None,
    client: Client | None = None,
) -> PrecomputeReport:
    """:func:`~kdcache.precompute.precompute` on dask, one task per shard range; the store is byte-identical.

    The same keywords as :func:`~kdcache.precompute.precompute` (a test holds the two lists equal), and exactly one of
    ``client`` (yours), ``workers`` (a new LocalCluster) or ``scheduler`` (an address). On a cluster whose workers do
    not share this process's code, pass ``teacher`` and ``dataset`` as :class:`~kdcache.registry.Factory` import
    paths.

    >>> precompute_on_dask(Factory("my_models:teacher"), Factory("my_data:train"), "train.zarr",
    ...                    targets=[build_target("logits", {})], views=views, num_classes=10, workers=2)  # doctest: +SKIP
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
    return run_on_dask(
        job,
        store,
        shard_samples=shard_samples,
        workers=workers,
        scheduler=scheduler,
        client=client,
        progress=progress,
        break_lock=break_lock,
    )
