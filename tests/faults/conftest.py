"""Fixtures of the fault-injection suite and the summary it prints at the end of the session."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from kdcache.models import DigitsCNN
from kdcache.views import ViewTransform
from tests.conftest import MEAN, STD
from tests.faults.ledger import OUTCOMES, summary_lines
from tests.faults.stores import build_store, read_everything


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    if OUTCOMES:
        for line in summary_lines():
            terminalreporter.write_line(line)


@pytest.fixture(scope="session")
def clean_store(tmp_path_factory, _trained_teacher, digits_small) -> Path:
    views = ViewTransform(count=1, seed=0, mean=MEAN, std=STD)
    return build_store(tmp_path_factory.mktemp("clean") / "store.zarr", _trained_teacher, digits_small, views)


@pytest.fixture(scope="session")
def other_store(tmp_path_factory, digits_small) -> Path:
    """The same layout made by another (untrained) teacher: a source of valid shards from somewhere else."""
    torch.manual_seed(123)
    views = ViewTransform(count=1, seed=0, mean=MEAN, std=STD)
    return build_store(
        tmp_path_factory.mktemp("other") / "store.zarr", DigitsCNN(10, width=8).eval(), digits_small, views
    )


@pytest.fixture(scope="session")
def clean_arrays(clean_store) -> dict[str, np.ndarray]:
    return read_everything(clean_store)


@pytest.fixture
def store_copy(tmp_path, clean_store) -> Path:
    """A private copy of the clean store to damage."""
    return Path(shutil.copytree(clean_store, tmp_path / "store.zarr"))


@pytest.fixture(scope="module")
def built(tmp_path_factory) -> dict:
    """A test digits pipeline (as a dict) whose teacher is trained and cached: what the mismatch cases edit."""
    from kdcache.pipeline import parse_pipeline
    from kdcache.pipeline.distill import run_precompute
    from tests.conftest import pipeline_dict

    raw = pipeline_dict(tmp_path_factory.mktemp("built"))
    run_precompute(parse_pipeline(raw), progress=False)
    return raw
