"""The stage-one engine takes objects or importable factories, in one process or on dask, and never a pipeline
file: the same job gives the same bytes every way it runs."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from kdcache import build_target, open_store, precompute, precompute_on_dask
from kdcache.errors import ConfigError
from kdcache.precompute import StageOneJob, TeacherRun, dask_client
from kdcache.registry import Factory
from kdcache.views import ViewTransform, build_view_op
from tests.conftest import DIGITS, MEAN, STD
from tests.helpers import all_files
from tests.precompute.factories import digits_teacher, digits_train

TEACHER = Factory("tests.precompute.factories:digits_teacher", kwargs={"width": 8, "seed": 3})
DATASET = Factory("tests.precompute.factories:digits_train", kwargs={"path": str(DIGITS), "limit": 300})
SPEC = {"arch": "digits-cnn", "width": 8, "seed": 3}


def views() -> ViewTransform:
    return ViewTransform(count=2, seed=1, mean=MEAN, std=STD, augment=[build_view_op("random_crop", {"padding": 1})])


def targets() -> list:
    return [build_target("logits", {}), build_target("embedding", {"layer": "pool"})]


def run_objects(path: Path) -> Path:
    precompute(
        digits_teacher(8, 3),
        digits_train(str(DIGITS)),
        str(path),
        targets=targets(),
        views=views(),
        num_classes=10,
        teacher_spec=SPEC,
        shard_samples=128,
        progress=False,
    )
    return path


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> dict[str, bytes]:
    return all_files(run_objects(tmp_path_factory.mktemp("objects") / "store.zarr"))


def test_factories_in_one_process_give_the_objects_bytes(tmp_path, reference):
    precompute(
        TEACHER,
        DATASET,
        str(tmp_path / "f.zarr"),
        targets=targets(),
        views=views(),
        num_classes=10,
        teacher_spec=SPEC,
        shard_samples=128,
        progress=False,
    )
    assert all_files(tmp_path / "f.zarr") == reference


@pytest.mark.distributed
def test_dask_from_python_without_a_pipeline_gives_the_same_bytes(tmp_path, reference):
    with dask_client(workers=2) as client:
        report = precompute_on_dask(
            TEACHER,
            DATASET,
            str(tmp_path / "factories.zarr"),
            targets=targets(),
            views=views(),
            num_classes=10,
            teacher_spec=SPEC,
            shard_samples=128,
            client=client,
            progress=False,
        )
        objects = precompute_on_dask(
            digits_teacher(8, 3),
            digits_train(str(DIGITS)),
            str(tmp_path / "objects.zarr"),
            targets=targets(),
            views=views(),
            num_classes=10,
            teacher_spec=SPEC,
            shard_samples=128,
            client=client,
            progress=False,
        )
    assert (report.shards_written, report.complete, objects.complete) == (3, True, True)
    assert all_files(tmp_path / "factories.zarr") == reference
    assert all_files(tmp_path / "objects.zarr") == reference


def test_a_factory_spec_defaults_to_its_description(tmp_path):
    job = StageOneJob(teacher=TEACHER, dataset=DATASET, targets=tuple(targets()), views=views(), num_classes=10)
    with TeacherRun(job) as run:
        assert run.fingerprint["spec"] == TEACHER.describe()
        assert len(run.dataset) == 300 and set(run.layouts) == {"logits", "embedding/pool"}


def test_what_is_not_a_teacher_or_a_dataset_is_refused_before_anything_runs(tmp_path):
    with pytest.raises(ConfigError, match=r"teacher must be a torch.nn.Module .*got Subset from factory"):
        precompute(DATASET, DATASET, str(tmp_path / "x.zarr"), targets=targets(), views=views(), num_classes=10)
    with pytest.raises(ConfigError, match=r"item 0 of Tensor is a Tensor; kdcache needs \(image, label\) items"):
        precompute(TEACHER, torch.zeros(3), str(tmp_path / "x.zarr"), targets=targets(), views=views(), num_classes=10)
    assert not (tmp_path / "x.zarr").exists()


def test_a_class_sorted_dataset_with_an_all_zero_label_shard_is_cached(tmp_path):
    """zarr skips chunks equal to the fill value unless told otherwise; every shard must still be written."""
    from kdcache.datasets import TensorDataset

    labels = torch.sort(torch.arange(256) % 4).values  # the first shard of 64 is all class 0 (the fill value)
    data = TensorDataset(
        torch.rand(256, 1, 8, 8, generator=torch.Generator().manual_seed(0)),
        labels,
        split="train",
        source={"kind": "class-sorted"},
    )
    teacher = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 4))
    report = precompute(
        teacher,
        data,
        str(tmp_path / "sorted.zarr"),
        targets=[build_target("logits", {})],
        views=views(),
        shard_samples=64,
        progress=False,
    )
    assert report.complete and (tmp_path / "sorted.zarr" / "samples/label/c/0").stat().st_size > 0
    stored = open_store(str(tmp_path / "sorted.zarr")).labels()
    np.testing.assert_array_equal(stored, labels.numpy())


def test_num_classes_is_read_from_the_teacher_and_a_wrong_one_is_refused(tmp_path):
    with pytest.raises(ConfigError, match=r"outputs 10 classes .* was told num_classes=5\. Pass num_classes=10"):
        precompute(TEACHER, DATASET, str(tmp_path / "x.zarr"), targets=targets(), views=views(), num_classes=5)
    assert not (tmp_path / "x.zarr").exists()
    precompute(TEACHER, DATASET, str(tmp_path / "y.zarr"), targets=targets(), views=views(), progress=False)
    assert open_store(str(tmp_path / "y.zarr")).manifest.dataset["num_classes"] == 10
