"""Stage one on dask.distributed: one task per shard range, the teacher loaded once per worker (DESIGN.md §4).

The coordinator (the calling process) declares the teacher in the store and plans the shard ranges still missing
(:func:`~kdcache.precompute.plan_work`, so a re-run resumes). Each task rebuilds nothing it already has: a worker keeps
one :class:`~kdcache.precompute.TeacherRun` per recipe, computes its range with :meth:`TeacherRun.compute` (the same
per-shard step as the single-process writer) and commits it with :meth:`StoreBuilder.commit`, which writes the shard,
digests it and writes its own small commit record. A commit is idempotent (same bytes, same record), so a task that
dask runs twice does no harm. The coordinator merges the records and publishes ``complete`` last, which makes the
store byte-identical to a single-process precompute.

Tasks carry the pipeline config and two fingerprints, never credentials: a remote store's credentials come from each
worker's environment (``StoreLocation`` drops credential options when pickled). Paths in the pipeline (data file,
teacher checkpoint) are opened by each worker, relative to its working directory: ``LocalCluster`` workers share
this process's; on a real cluster start workers where the same paths resolve (or use absolute ones). A worker that
loads a different teacher or dataset than the coordinator refuses to write.
"""

from __future__ import annotations

import logging
import os
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from tqdm.auto import tqdm

from kdcache.config import PipelineConfig
from kdcache.errors import ConfigError, StoreMismatchError
from kdcache.fingerprint import canonical_digest, dataset_fingerprint
from kdcache.precompute import PrecomputeReport, ShardWork, TeacherRun, finalize, make_report, plan_work
from kdcache.store.location import StoreLocation, io_errors
from kdcache.store.lock import StoreLock
from kdcache.store.manifest import read_manifest
from kdcache.store.writer import StoreBuilder

if TYPE_CHECKING:
    from distributed import Client

log = logging.getLogger(__name__)

WORKER_WAIT_SECONDS = 60.0


@dataclass(frozen=True)
class WorkerRecipe:
    """Everything a worker needs to rebuild the coordinator's teacher run, and the fingerprints it must reproduce."""

    cfg: PipelineConfig
    teacher_digest: str
    dataset_digest: str

    @property
    def key(self) -> str:
        """Identity of the run a worker caches: the pipeline, the checkpoint's content and the dataset's."""
        return canonical_digest(
            {"cfg": self.cfg.model_dump(mode="json"), "teacher": self.teacher_digest, "dataset": self.dataset_digest}
        )


@dataclass
class _WorkerState:
    key: str
    run: TeacherRun
    builder: StoreBuilder
    lock: threading.Lock = field(default_factory=threading.Lock)


_STATE: dict[str, _WorkerState] = {}  # per worker process: the latest recipe's run (one teacher held at a time)
_STATE_LOCK = threading.Lock()


def _worker_state(recipe: WorkerRecipe) -> _WorkerState:
    """This worker's run for ``recipe``, loading the teacher and dataset the first time (once per worker)."""
    from kdcache.experiment import load_teacher, teacher_run

    key = recipe.key
    with _STATE_LOCK:
        state = _STATE.get(key)
        if state is None:
            for old in _STATE.values():
                old.run.close()
            _STATE.clear()
            run = teacher_run(recipe.cfg, load_teacher(recipe.cfg))
            _require_same_inputs(recipe, run)
            location = StoreLocation(recipe.cfg.store_url)
            state = _STATE[key] = _WorkerState(key, run, StoreBuilder(location, read_manifest(location)))
        return state


def _require_same_inputs(recipe: WorkerRecipe, run: TeacherRun) -> None:
    found = {
        "teacher": run.fingerprint["digest"],
        "dataset": dataset_fingerprint(run.dataset, num_classes=run.num_classes)["digest"],
    }
    expected = {"teacher": recipe.teacher_digest, "dataset": recipe.dataset_digest}
    differ = [k for k in expected if found[k] != expected[k]]
    if differ:
        raise StoreMismatchError(
            f"a dask worker loaded a different {' and '.join(differ)} than the coordinator (checkpoint "
            f"{str(recipe.cfg.teacher_checkpoint)!r}, data {recipe.cfg.data.dataset} {recipe.cfg.data.args}). "
            "Start workers where the pipeline's paths resolve to the same files, or use absolute paths"
        )


def run_shard(recipe: WorkerRecipe, work: ShardWork) -> int:
    """A dask task: compute and commit one shard range; returns the teacher samples it wrote (for progress)."""
    state = _worker_state(recipe)
    with state.lock:  # one shard at a time per worker: the teacher's layer capture is not thread-safe
        for rows in state.run.compute(work):
            state.builder.commit(*rows)
    return work.stop - work.start if state.run.owner in work.owners else 0


@contextmanager
def dask_client(*, workers: int | None = None, scheduler: str | None = None) -> Iterator[Client]:
    """A client of the cluster at ``scheduler``, or of a new ``LocalCluster`` of ``workers`` one-thread processes."""
    from distributed import Client, LocalCluster

    _check_cluster(workers, scheduler)
    if scheduler is not None:
        with Client(scheduler) as client:
            _wait_for_workers(client, scheduler)
            yield client
        return
    with (
        _nanny_environ_undone(),
        LocalCluster(n_workers=workers, threads_per_worker=1, processes=True, dashboard_address=None) as cluster,
        Client(cluster) as client,
    ):
        yield client


@contextmanager
def _nanny_environ_undone() -> Iterator[None]:
    """Give back the variables dask's nannies write into this process (``OMP_NUM_THREADS=1``, ...) on exit.

    dask sets ``distributed.nanny.pre-spawn-environ`` in the parent to reach the spawned workers; left there, it
    silently changes the thread count (and so the float results) of every subprocess the caller starts later.
    """
    import dask

    keys = {*dask.config.get("distributed.nanny.pre-spawn-environ", {}), "PYTHONHASHSEED"}
    saved = {key: os.environ.get(key) for key in keys}
    try:
        yield
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def _check_cluster(workers: int | None, scheduler: str | None) -> None:
    if (workers is None) == (scheduler is None):
        raise ConfigError(
            f"give exactly one of --workers N (a local cluster) or --scheduler ADDRESS (an existing one); got "
            f"workers={workers}, scheduler={scheduler!r}"
        )
    if workers is not None and workers < 1:
        raise ConfigError(f"--workers must be at least 1, got {workers}")


def _wait_for_workers(client: Client, address: str) -> None:
    try:
        client.wait_for_workers(1, timeout=WORKER_WAIT_SECONDS)
    except TimeoutError:
        raise ConfigError(
            f"the dask scheduler at {address} has no workers after {WORKER_WAIT_SECONDS:.0f} s; start some with "
            f"`dask worker {address}` from the directory the pipeline's paths are relative to"
        ) from None


def precompute_on_dask(
    cfg: PipelineConfig,
    *,
    workers: int | None = None,
    scheduler: str | None = None,
    progress: bool = True,
    break_lock: bool = False,
) -> PrecomputeReport:
    """Stage one for the pipeline's teacher on dask: ``workers`` local processes, or the cluster at ``scheduler``.

    The resulting store is byte-identical to :func:`~kdcache.experiment.run_precompute` in one process.

    >>> precompute_on_dask(load_pipeline("pipelines/digits_kd.yaml"), workers=2)  # doctest: +SKIP
    """
    from kdcache.experiment import ensure_teacher, teacher_run

    _check_cluster(workers, scheduler)
    location = StoreLocation(cfg.store_url)
    teacher = ensure_teacher(cfg, progress=progress)
    lock = StoreLock(location, break_lock=break_lock)
    with (
        io_errors(location, f"precomputing teacher {cfg.teacher.name!r} on dask"),
        lock,
        teacher_run(cfg, teacher) as run,
    ):
        builder = run.open_store(location, cfg.cache.shard_samples)
        recipe = WorkerRecipe(
            cfg, run.fingerprint["digest"], dataset_fingerprint(run.dataset, num_classes=run.num_classes)["digest"]
        )
        work = plan_work(builder, run.owner)
        log.info("%s: %d shard range(s) to write for teacher %r on dask", cfg.store_url, len(work), run.name)
        seconds = 0.0
        try:
            if work:
                with dask_client(workers=workers, scheduler=scheduler) as client:
                    seconds = _run_all(client, recipe, work, run, progress)
        finally:
            complete = finalize(builder, run.owner)
        return make_report(builder, run, work, seconds, complete)


def _run_all(client: Client, recipe: WorkerRecipe, work: list[ShardWork], run: TeacherRun, progress: bool) -> float:
    """Submit one task per shard range and wait for all; the first failure cancels the rest and is re-raised.
    Returns the seconds from submission to the last commit (cluster start-up not included)."""
    from distributed import as_completed

    start = time.perf_counter()
    todo = sum(w.stop - w.start for w in work if run.owner in w.owners)
    prefix = f"kdcache-{run.name}-{uuid.uuid4().hex[:8]}-shard"  # fresh per run: never a stale result by key
    futures = [client.submit(run_shard, recipe, w, key=f"{prefix}-{w.index}", pure=False) for w in work]
    bar = tqdm(total=todo, unit="sample", desc=f"precompute {run.name} (dask)", disable=not progress)
    try:
        for future in as_completed(futures):
            bar.update(future.result())
    finally:
        bar.close()
        client.cancel(futures)
    return time.perf_counter() - start
