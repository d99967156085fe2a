"""Stage one on a real dask LocalCluster: byte-identical to one process, resumable, idempotent per task."""

from __future__ import annotations

import logging
import os
from pathlib import Path

import pytest

from kdcache.errors import ConfigError, StoreMismatchError
from kdcache.pipeline import DistillConfig, parse_pipeline
from kdcache.pipeline.build import load_split, pipeline_factories
from kdcache.pipeline.distill import run_precompute, stage_one_job
from kdcache.pipeline.teacher import ensure_teacher
from kdcache.precompute import ShardWork, run_local
from kdcache.precompute.cluster import dask_client
from kdcache.precompute.dask import WorkerRecipe, run_shard
from kdcache.store import read_manifest
from kdcache.store.layout import SAMPLES_OWNER
from kdcache.store.location import StoreLocation
from tests.conftest import DIGITS, pipeline_dict, with_changes
from tests.helpers import Interrupting, all_files

pytestmark = pytest.mark.distributed


def config(tmp_path: Path, store: str, shard_samples: int) -> DistillConfig:
    """A test pipeline with absolute paths (workers resolve them) and the store at ``tmp_path/store``."""
    raw = pipeline_dict(tmp_path, data__args={"path": str(DIGITS)}, cache__shard_samples=shard_samples)
    return parse_pipeline(with_changes(raw, cache__store=str(tmp_path / store)))


@pytest.fixture(scope="module")
def client():
    with dask_client(workers=2) as client:
        yield client


def test_two_worker_local_cluster_writes_the_same_bytes_as_one_process(tmp_path):
    single = run_precompute(config(tmp_path, "single.zarr", 64), progress=False)
    report = run_precompute(config(tmp_path, "dask.zarr", 64), progress=False, workers=2)
    assert (report.shards_written, report.shards_skipped, report.complete) == (4, 0, True)
    assert report.accuracy == single.accuracy
    files = all_files(tmp_path / "dask.zarr")
    assert "kdcache.manifest.json" in files and "teachers/cnn16/logits/c/3/0/0" in files
    assert files == all_files(tmp_path / "single.zarr")


def _count_teacher_loads() -> None:
    """Run on each worker: count calls of the teacher factory from now on (a worker resolves it at call time)."""
    import kdcache.pipeline.build as build

    original = build.pipeline_teacher

    def counted(pipeline):  # noqa: ANN001, ANN202
        counted.calls += 1
        return original(pipeline)

    counted.calls = 0
    build.pipeline_teacher = counted


def _teacher_loads() -> int:
    import kdcache.pipeline.build as build

    return build.pipeline_teacher.calls


def test_resume_on_an_existing_cluster_skips_committed_shards(tmp_path, client):
    reference = config(tmp_path, "reference.zarr", 32)
    run_precompute(reference, progress=False)
    cfg = config(tmp_path, "resumed.zarr", 32)
    train = Interrupting(load_split(cfg, cfg.data.train_split), stop_at=128)  # Ctrl-C while computing shard 4
    job = stage_one_job(cfg, teacher=ensure_teacher(cfg, progress=False), dataset=train)
    with pytest.raises(KeyboardInterrupt):
        run_local(job, cfg.store_url, shard_samples=32, progress=False)
    partial = read_manifest(StoreLocation(cfg.store_url))
    assert partial.status == "building" and [c.index for c in partial.teachers["cnn16"].shards] == [0, 1, 2, 3]

    client.run(_count_teacher_loads)
    report = run_precompute(cfg, progress=False, scheduler=client.scheduler.address)
    assert (report.shards_written, report.shards_skipped, report.complete) == (4, 4, True)
    loads = client.run(_teacher_loads)
    assert sum(loads.values()) <= 2 and max(loads.values()) == 1  # once per worker that ran tasks, not per task
    assert all_files(tmp_path / "resumed.zarr") == all_files(tmp_path / "reference.zarr")


def recipe_of(cfg: DistillConfig, teacher_digest: str | None = None) -> WorkerRecipe:
    """The recipe the CLI's dask path ships: the pipeline's factories and the digests the store recorded."""
    location = StoreLocation(cfg.store_url)
    manifest = read_manifest(location)
    teacher, dataset = pipeline_factories(cfg)
    job = stage_one_job(cfg, teacher=teacher, dataset=dataset)
    digest = teacher_digest or manifest.teachers[cfg.teacher.name].fingerprint["digest"]
    return WorkerRecipe(job, location, digest, manifest.dataset["digest"])


def test_a_task_that_runs_twice_is_harmless(tmp_path, client):
    cfg = config(tmp_path, "twice.zarr", 64)
    run_precompute(cfg, progress=False, scheduler=client.scheduler.address)
    before = all_files(tmp_path / "twice.zarr")
    work = ShardWork(1, 64, 128, ("teachers/cnn16", SAMPLES_OWNER))
    workers = sorted(client.scheduler_info()["workers"])
    futures = [client.submit(run_shard, recipe_of(cfg), work, workers=[w], pure=False) for w in workers]
    assert client.gather(futures) == [64, 64]  # both copies ran, concurrently, on different workers
    assert all_files(tmp_path / "twice.zarr") == before


def test_a_worker_that_loads_another_teacher_refuses_to_write(tmp_path, client):
    cfg = config(tmp_path, "other.zarr", 64)
    run_precompute(cfg, progress=False)
    before = all_files(tmp_path / "other.zarr")
    wrong = recipe_of(cfg, teacher_digest="0" * 64)
    future = client.submit(run_shard, wrong, ShardWork(0, 0, 64, ("teachers/cnn16",)), pure=False)
    with pytest.raises(StoreMismatchError, match=r"dask workers built a different teacher from the same job"):
        future.result()
    assert all_files(tmp_path / "other.zarr") == before


def test_cluster_arguments_are_checked_before_any_work(tmp_path):
    cfg = config(tmp_path, "none.zarr", 64)
    with pytest.raises(ConfigError, match=r"--workers must be at least 1, got 0"):
        run_precompute(cfg, progress=False, workers=0)
    with pytest.raises(ConfigError, match=r"exactly one of --workers N .* or --scheduler ADDRESS"):
        run_precompute(cfg, workers=2, scheduler="tcp://127.0.0.1:1", progress=False)
    assert not (tmp_path / "none.zarr").exists() and not cfg.teacher_checkpoint.exists()


def test_a_local_cluster_gives_back_the_thread_settings_its_nannies_set(monkeypatch):
    # dask writes OMP_NUM_THREADS=1 into the parent to reach its workers; later subprocesses must not inherit it
    for key in ("OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        monkeypatch.delenv(key, raising=False)
    with dask_client(workers=1):
        assert os.environ["OMP_NUM_THREADS"] == "1"
    assert "OMP_NUM_THREADS" not in os.environ and "MKL_NUM_THREADS" not in os.environ


def _exit_slowly(seconds: float) -> None:
    """Run on a worker: make its interpreter's exit take ``seconds``, as torch's teardown does on a loaded machine."""
    import atexit
    import time

    atexit.register(time.sleep, seconds)


def test_closing_a_local_cluster_prints_no_nanny_warnings():
    """An idle worker slower to exit than the nanny's 4 s grace used to print ``distributed.nanny - WARNING - Worker
    process still alive after 4.0 seconds, killing`` at the end of every run on a loaded machine."""
    records: list[logging.LogRecord] = []
    handler = logging.Handler(logging.WARNING)
    handler.emit = records.append  # type: ignore[method-assign]
    nanny = logging.getLogger("distributed.nanny")
    nanny.addHandler(handler)
    try:
        with dask_client(workers=1) as client:
            client.run(_exit_slowly, 6.0)
            address = next(iter(client.scheduler_info()["workers"]))
        assert nanny.getEffectiveLevel() <= logging.WARNING  # quiet during the close only
    finally:
        nanny.removeHandler(handler)
    assert address.startswith("tcp://")
    assert [r.getMessage() for r in records] == []
