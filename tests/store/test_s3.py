"""Stores on S3 (a real moto server on 127.0.0.1): precompute -> train -> inspect, and credentials never leak."""

from __future__ import annotations

import os
import pickle
import subprocess
import sys

import cloudpickle
import numpy as np
import pytest
import s3fs
import torch

from kdcache.errors import ConfigError, StoreNotFoundError
from kdcache.models import DigitsCNN
from kdcache.pipeline import load_pipeline, parse_pipeline
from kdcache.pipeline.build import pipeline_factories
from kdcache.pipeline.distill import run_precompute, stage_one_job
from kdcache.precompute import ShardWork, precompute
from kdcache.precompute.dask import WorkerRecipe
from kdcache.store import open_store, read_manifest
from kdcache.store.location import S3_DEFAULTS, StoreLocation
from kdcache.targets import build_target
from kdcache.train import CachedDataset, batch_loader, set_loader_epoch
from kdcache.views import ViewTransform
from tests.conftest import KEY_ID, MEAN, ROOT, SECRET, STD, pipeline_dict
from tests.helpers import all_files

PIPELINE = ROOT / "pipelines" / "digits_kd.yaml"
OTHER_KEY_ID, OTHER_SECRET = "AKIAKDCACHEOPTIONS02", "kdcache-options-secret-93b7d4"  # passed as storage options
STORE = "s3://bucket/prefix/train.zarr"
SMALL = [
    "data.max_train_samples=240",
    "data.max_test_samples=120",
    "teacher.train.stages.0.epochs=3",
    "student.train.stages.0.epochs=2",
    "cache.shard_samples=64",
    f"cache.store={STORE}",
]


def kdcache(env: dict[str, str], *args: str) -> subprocess.CompletedProcess:
    result = subprocess.run(
        [sys.executable, "-m", "kdcache", "-v", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
        env={**os.environ, **env},
    )
    assert result.returncode == 0, result.stderr
    return result


def store_objects(prefix: str) -> dict[str, bytes]:
    """Every object under ``bucket/<prefix>/``, by key relative to it."""
    fs = s3fs.S3FileSystem()
    root = f"bucket/{prefix}/"
    return {path.removeprefix(root): fs.cat_file(path) for path in fs.find(root)}


def assert_no_credentials(*texts: str | bytes) -> None:
    for text in texts:
        blob = text.encode() if isinstance(text, str) else text
        for secret in (KEY_ID, SECRET, OTHER_KEY_ID, OTHER_SECRET):
            assert secret.encode() not in blob


@pytest.mark.distributed
def test_precompute_train_inspect_stats_on_s3(s3_env, tmp_path):
    sets = [arg for s in [*SMALL, f"output_dir={tmp_path / 'run'}"] for arg in ("--set", s)]
    runs = [
        kdcache(s3_env, "precompute", str(PIPELINE), "--quiet", "--workers", "2", *sets),
        kdcache(s3_env, "train", str(PIPELINE), "--quiet", *sets),
        kdcache(s3_env, "inspect", STORE),
        kdcache(s3_env, "stats", STORE, "--out", str(tmp_path / "stats"), "--quiet"),
    ]
    assert "4 shard(s) written" in runs[0].stdout and "complete" in runs[0].stdout
    assert "INFO kdcache.precompute.engine" in runs[0].stderr  # -v logs what was planned: logs are checked below
    assert "student (cached): accuracy" in runs[1].stdout
    assert "status: complete" in runs[2].stdout and "(240, 1, 10)" in runs[2].stdout
    assert "ECE (15 bins)" in runs[3].stdout and (tmp_path / "stats" / "reliability.png").is_file()
    assert open_store(STORE).check_digests() == []

    # the same pipeline into a local store gives the same objects, byte for byte
    local = tmp_path / "local.zarr"
    run_precompute(
        load_pipeline(PIPELINE, [*SMALL, f"output_dir={tmp_path / 'run'}", f"cache.store={local}"]), progress=False
    )
    objects = store_objects("prefix/train.zarr")
    assert objects == all_files(local)

    outputs = [r.stdout + r.stderr for r in runs]
    assert_no_credentials(*outputs, *objects.values(), (tmp_path / "stats" / "stats.json").read_text())


@pytest.fixture(scope="module")
def views_module() -> ViewTransform:
    return ViewTransform(count=1, seed=0, mean=MEAN, std=STD)


@pytest.fixture(scope="module")
def s3_store(s3_env, digits_small, views_module) -> str:
    url = "s3://bucket/pickles/train.zarr"
    precompute(
        DigitsCNN(10, width=4).eval(),
        digits_small,
        url,
        targets=[build_target("logits", {})],
        views=views_module,
        num_classes=10,
        teacher_name="t4",
        shard_samples=128,
        progress=False,
    )
    return url


def test_credentials_in_storage_options_are_used_but_never_pickled(s3_store, digits_small, views_module):
    options = {"key": OTHER_KEY_ID, "secret": OTHER_SECRET}
    location = StoreLocation(s3_store, options)
    assert location.fs.key == OTHER_KEY_ID  # used for this process's I/O
    data = CachedDataset(
        digits_small,
        open_store(s3_store, storage_options=options),
        teacher="t4",
        targets=["logits"],
        views=views_module,
        ram_budget_bytes=0,
    )
    order = np.array([3, 290, 130])
    blobs = [pickle.dumps(location), pickle.dumps(data), cloudpickle.dumps(data)]
    assert_no_credentials(*blobs, repr(location), repr(data.readers["logits"]["logits"].location))
    copy = pickle.loads(blobs[1])  # a DataLoader worker's copy reads with its own (environment) credentials
    kept = copy.readers["logits"]["logits"].location.storage_options
    assert kept == {"use_listings_cache": False, **S3_DEFAULTS}  # the defaults, without the credentials
    assert np.array_equal(copy[order].stored["logits"]["logits"], data[order].stored["logits"]["logits"])


def test_dask_tasks_carry_no_credentials(s3_store, tmp_path):
    cfg = parse_pipeline({**pipeline_dict(tmp_path), "cache": {"store": s3_store}})
    manifest = read_manifest(StoreLocation(s3_store))
    teacher, dataset = pipeline_factories(cfg)
    job = stage_one_job(cfg, teacher=teacher, dataset=dataset)
    location = StoreLocation(s3_store, {"key": KEY_ID, "secret": SECRET})
    recipe = WorkerRecipe(job, location, manifest.teachers["t4"].fingerprint["digest"], manifest.dataset["digest"])
    assert_no_credentials(cloudpickle.dumps((recipe, ShardWork(0, 0, 128, ("teachers/t4",)))))


def test_errors_and_refusals_do_not_show_credentials(s3_env):
    with pytest.raises(StoreNotFoundError, match=r"'s3://bucket/missing.zarr' does not exist") as missing:
        open_store("s3://bucket/missing.zarr", storage_options={"key": OTHER_KEY_ID, "secret": OTHER_SECRET})
    with pytest.raises(ConfigError, match=r"embeds credentials.*AWS_SECRET_ACCESS_KEY") as embedded:
        StoreLocation(f"s3://{OTHER_KEY_ID}:{OTHER_SECRET}@bucket/x.zarr")
    assert "'s3://***@bucket/x.zarr'" in str(embedded.value)
    assert_no_credentials(str(missing.value), str(embedded.value), repr(missing.value), repr(embedded.value))


def test_streamed_s3_targets_reach_forked_dataloader_workers(s3_store, digits_small, views_module):
    """The parent reads first (its s3fs and zarr handles exist), then DataLoader workers fork and read their own."""
    data = CachedDataset(
        digits_small, open_store(s3_store), teacher="t4", targets=["logits"], views=views_module, ram_budget_bytes=0
    )
    assert not data.readers["logits"]["logits"].in_memory
    whole = data[np.arange(300)].stored["logits"]["logits"]
    loader = batch_loader(data, batch_size=64, seed=0, num_workers=2)
    set_loader_epoch(loader, 1)
    seen = []
    for batch in loader:
        assert torch.equal(batch.stored["logits"]["logits"], whole[batch.indices])
        seen += batch.indices.tolist()
    assert sorted(seen) == list(range(300))
