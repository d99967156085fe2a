"""Shared fixtures: the shipped digits, a seeded tiny teacher, and pipeline configs that run in seconds."""

from __future__ import annotations

import copy
import logging
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import s3fs
import torch

from kdcache.datasets import HDF5Dataset, Subset
from kdcache.models import DigitsCNN
from kdcache.pipeline import DistillConfig, parse_pipeline
from kdcache.precompute import PrecomputeReport, precompute
from kdcache.store import open_store
from kdcache.targets import build_target
from kdcache.train import CachedDataset
from kdcache.views import ViewTransform
from tests.lmkit import _lm_teacher, lm_corpus, lm_teacher, lm_tokenizer, lm_train  # noqa: F401  (language models)

ROOT = Path(__file__).resolve().parents[1]
KEY_ID = "AKIAKDCACHETESTKEY01"  # the moto server's test credentials: searched for in every artifact
SECRET = "kdcache-test-secret-6f1c2a9e"
DIGITS = ROOT / "kdcache" / "datasets" / "digits.h5"
MEAN, STD = (0.3056,), (0.3761,)


@pytest.fixture(autouse=True)
def _run_from_repo_root(monkeypatch: pytest.MonkeyPatch) -> None:
    """Pipelines name files (``pipelines/``, ``runs/``) relative to the repository root, as the README's commands do."""
    monkeypatch.chdir(ROOT)


@pytest.fixture(scope="session", autouse=True)
def _token_cache(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """Tokenized text streams go to the session's temporary directory, not the user's cache (worker processes
    inherit the variable)."""
    with pytest.MonkeyPatch.context() as patch:
        path = tmp_path_factory.mktemp("token-cache")
        patch.setenv("KDCACHE_TOKEN_CACHE", str(path))
        yield path


@pytest.fixture(scope="session")
def digits_train() -> HDF5Dataset:
    return HDF5Dataset(DIGITS, "train")


@pytest.fixture(scope="session")
def digits_small(digits_train: HDF5Dataset) -> Subset:
    """The first 300 training digits: three shards of 128 (the last one partial) at shard_samples=128."""
    return Subset(digits_train, np.arange(300), tag="first-300")


@pytest.fixture(scope="session")
def _trained_teacher(digits_small: Subset) -> DigitsCNN:
    """A width-8 CNN trained for 3 epochs on the 300 digits: spread-out, realistic logits and features."""
    torch.manual_seed(0)
    model = DigitsCNN(10, width=8)
    optimizer = torch.optim.Adam(model.parameters(), lr=0.01)
    normalise = ViewTransform(count=1, seed=0, mean=MEAN, std=STD)
    inputs, labels = digits_small.get_batch(np.arange(len(digits_small)))
    inputs = normalise(inputs, None, None)
    for _ in range(3):
        for batch in torch.arange(len(labels)).split(32):
            loss = torch.nn.functional.cross_entropy(model(inputs[batch]), labels[batch])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
    return model.eval()


@pytest.fixture
def teacher(_trained_teacher: DigitsCNN) -> DigitsCNN:
    """A private copy of the trained teacher, so a test may change it freely."""
    return copy.deepcopy(_trained_teacher)


@pytest.fixture
def views() -> ViewTransform:
    return ViewTransform(count=1, seed=0, mean=MEAN, std=STD)


@pytest.fixture
def logits_target():
    return build_target("logits", {"dtype": "float16"})


def cache_digits(
    path: Path, teacher: torch.nn.Module, dataset: Any, views: ViewTransform, targets: list, *, teacher_name: str = "t8"
) -> PrecomputeReport:
    """Stage one of ``teacher`` on ``dataset`` into ``path``, in shards of 128 (three for the 300 digits)."""
    return precompute(
        teacher,
        dataset,
        path,
        targets=targets,
        views=views,
        num_classes=10,
        teacher_name=teacher_name,
        shard_samples=128,
        progress=False,
    )


def cached_dataset(
    path: Path, dataset: Any, views: ViewTransform, targets: list[str], teacher: str = "t8"
) -> CachedDataset:
    """Stage two's dataset over the store at ``path``."""
    return CachedDataset(dataset, open_store(str(path)), teacher=teacher, targets=targets, views=views)


def pipeline_dict(tmp_path: Path, **changes: Any) -> dict[str, Any]:
    """A digits KD pipeline sized for tests: 240 train / 120 test samples, a few epochs, store under tmp_path."""
    raw: dict[str, Any] = {
        "name": "test_kd",
        "seed": 0,
        "output_dir": str(tmp_path / "run"),
        "data": {
            "dataset": "digits",
            "num_classes": 10,
            "mean": list(MEAN),
            "std": list(STD),
            "max_train_samples": 240,
            "max_test_samples": 120,
        },
        "teacher": {
            "name": "cnn16",
            "model": {"arch": "digits-cnn", "args": {"width": 16}},
            "train": {
                "batch_size": 32,
                "stages": [{"epochs": 3, "optimizer": {"lr": 0.003}, "losses": [{"name": "ce"}]}],
            },
        },
        "student": {
            "model": {"arch": "digits-cnn", "args": {"width": 2}},
            "train": {
                "batch_size": 32,
                "stages": [
                    {
                        "epochs": 2,
                        "optimizer": {"lr": 0.01},
                        "losses": [{"name": "ce", "weight": 0.1}, {"name": "kd", "weight": 0.9, "temperature": 4}],
                    }
                ],
            },
        },
        "cache": {"shard_samples": 128},
    }
    return with_changes(raw, **changes)


def with_changes(raw: dict[str, Any], **changes: Any) -> dict[str, Any]:
    """A deep copy of a pipeline dict with ``section__key=value`` changes applied."""
    raw = copy.deepcopy(raw)
    for dotted, value in changes.items():
        node = raw
        keys = dotted.split("__")
        for key in keys[:-1]:
            node = node[key]
        node[keys[-1]] = value
    return raw


@pytest.fixture
def pipeline(tmp_path: Path) -> DistillConfig:
    return parse_pipeline(pipeline_dict(tmp_path))


@pytest.fixture(scope="module")
def s3_env() -> Iterator[dict[str, str]]:
    """A moto S3 server on an ephemeral port; credentials and endpoint in the environment, as s3fs expects."""
    from moto.server import ThreadedMotoServer

    logging.getLogger("werkzeug").setLevel(logging.ERROR)  # one line per request otherwise
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    # moto keeps its buckets in process-wide state: start every module from an empty S3
    urllib.request.urlopen(urllib.request.Request(f"http://{host}:{port}/moto-api/reset", method="POST")).close()
    env = {
        "AWS_ACCESS_KEY_ID": KEY_ID,
        "AWS_SECRET_ACCESS_KEY": SECRET,
        "AWS_ENDPOINT_URL": f"http://{host}:{port}",
        "AWS_DEFAULT_REGION": "us-east-1",
    }
    with pytest.MonkeyPatch.context() as patch:
        for name, value in env.items():
            patch.setenv(name, value)
        s3fs.S3FileSystem.clear_instance_cache()  # instances remember the endpoint they were made with
        s3fs.S3FileSystem().mkdir("bucket")
        yield env
        s3fs.S3FileSystem.clear_instance_cache()
    server.stop()
