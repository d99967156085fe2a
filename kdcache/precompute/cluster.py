"""Dask clusters for stage one: a new LocalCluster of one-thread worker processes, or an existing scheduler.

Whichever it is, the caller gets a connected :class:`distributed.Client` with at least one worker, and a
LocalCluster leaves this process's environment as it found it.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING

from kdcache.errors import ConfigError, say

if TYPE_CHECKING:
    from distributed import Client

WORKER_WAIT_SECONDS = 60.0


@contextmanager
def dask_client(*, workers: int | None = None, scheduler: str | None = None) -> Iterator[Client]:
    """A client of the cluster at ``scheduler``, or of a new ``LocalCluster`` of ``workers`` one-thread processes."""
    from distributed import Client, LocalCluster

    check_cluster(workers, scheduler)
    if scheduler is not None:
        with Client(scheduler) as client:
            _wait_for_workers(client, scheduler)
            yield client
        return
    # ":0": the scheduler's HTTP server on a free port, not a warning when another cluster holds 8787
    with _nanny_environ_undone():
        cluster = LocalCluster(n_workers=workers, threads_per_worker=1, processes=True, dashboard_address=":0")
        try:
            with Client(cluster) as client:  # the client goes first, so no task or future outlives the workers
                yield client
        finally:
            with _quiet_nannies():
                cluster.close()


@contextmanager
def _quiet_nannies() -> Iterator[None]:
    """Hide the nannies' warnings while the LocalCluster closes (only then).

    A nanny gives its idle worker a fixed 4 s to exit, then kills it and warns ``Worker process still alive after
    4.0 seconds, killing``. A worker holding torch takes longer than that to tear down on a loaded machine, so every
    run ended with the warning. Nothing is lost by the kill: every shard is committed (and the manifest published)
    before the cluster closes, and the cluster is closed only after its client.
    """
    nanny = logging.getLogger("distributed.nanny")
    level = nanny.level
    nanny.setLevel(logging.ERROR)
    try:
        yield
    finally:
        nanny.setLevel(level)


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


def check_cluster(workers: int | None, scheduler: str | None) -> None:
    if (workers is None) == (scheduler is None):
        raise ConfigError(
            f"give exactly one of {say('workers=N', '--workers N')} (a local cluster) or "
            f"{say('scheduler=ADDRESS', '--scheduler ADDRESS')} (an existing one); got "
            f"workers={workers}, scheduler={scheduler!r}"
        )
    if workers is not None and workers < 1:
        raise ConfigError(f"{say('workers', '--workers')} must be at least 1, got {workers}")


def _wait_for_workers(client: Client, address: str) -> None:
    try:
        client.wait_for_workers(1, timeout=WORKER_WAIT_SECONDS)
    except TimeoutError:
        raise ConfigError(
            f"the dask scheduler at {address} has no workers after {WORKER_WAIT_SECONDS:.0f} s; start some with "
            f"`dask worker {address}` from the directory the pipeline's paths are relative to"
        ) from None
