"""Stage two refuses a store that does not describe the training run, naming both sides and the fix."""

from __future__ import annotations

import shutil

import h5py
import pytest

from kdcache.errors import StoreIncompleteError, StoreMismatchError, StoreNotFoundError
from kdcache.pipeline import DistillConfig, parse_pipeline
from kdcache.pipeline.distill import run_precompute, train_student
from kdcache.store import read_manifest
from kdcache.store.location import StoreLocation
from tests.conftest import DIGITS, pipeline_dict, with_changes


@pytest.fixture
def built(tmp_path):
    raw = pipeline_dict(tmp_path)
    run_precompute(parse_pipeline(raw), progress=False)
    return raw


def variant(raw: dict, **changes) -> DistillConfig:
    return parse_pipeline(with_changes(raw, **changes))


def test_missing_store_is_reported(tmp_path):
    with pytest.raises(StoreNotFoundError, match="kdcache precompute"):
        train_student(parse_pipeline(pipeline_dict(tmp_path)), "cached", progress=False)


def test_sample_count_mismatch_names_both_counts(built):
    with pytest.raises(StoreMismatchError, match=r"holds 240 samples but the training set has 200"):
        train_student(variant(built, data__max_train_samples=200), "cached", progress=False)


def test_dataset_content_mismatch_names_what_differs(built, tmp_path):
    copy = tmp_path / "edited" / "digits.h5"  # same name, length and labels; one image edited
    copy.parent.mkdir()
    shutil.copy(DIGITS, copy)
    with h5py.File(copy, "r+") as f:
        f["train/images"][0, 0, 0] = 16 - f["train/images"][0, 0, 0]
    other = variant(built, data__args={"path": str(copy)})
    with pytest.raises(StoreMismatchError, match=r"different dataset: content_sha256: store \"[0-9a-f]+\", now"):
        train_student(other, "cached", progress=False)


def test_class_count_mismatch(built):
    with pytest.raises(StoreMismatchError, match=r"has 10 classes, but the student is trained for 12"):
        train_student(variant(built, data__num_classes=12), "cached", progress=False)


def test_view_spec_mismatch_names_the_field_that_differs(built):
    with pytest.raises(
        StoreMismatchError, match=r"other views: transform\.normalize\.mean\[0\]: store 0\.3\d*, now 0\.5\."
    ) as raised:
        train_student(variant(built, data__mean=[0.5]), "cached", progress=False)
    assert len(str(raised.value)) < 400  # the field and both values, not both whole specs


def test_incomplete_store_is_refused(built):
    cfg = parse_pipeline(built)
    location = StoreLocation(cfg.store_url)
    manifest = read_manifest(location)
    record = manifest.teachers["cnn16"]
    manifest.teachers["cnn16"] = record.model_copy(update={"status": "building", "shards": record.shards[:1]})
    from kdcache.store.manifest import write_manifest

    write_manifest(location, manifest)
    with pytest.raises(StoreIncompleteError, match=r"1/2 shards committed.*resumes"):
        train_student(cfg, "cached", progress=False)


def test_unknown_teacher_in_store(built):
    with pytest.raises(StoreMismatchError, match=r"no teacher 'other'; it holds \['cnn16'\]"):
        train_student(variant(built, teacher__name="other"), "cached", progress=False)


def test_different_teacher_under_the_same_name_is_refused_and_store_untouched(built):
    cfg = parse_pipeline(built)
    before = read_manifest(StoreLocation(cfg.store_url))
    wider = variant(
        built,
        teacher__model={"arch": "digits-cnn", "args": {"width": 8}},
        teacher__checkpoint=str(cfg.out / "teacher8.safetensors"),
    )
    with pytest.raises(StoreMismatchError, match=r"already holds teacher 'cnn16' made from a different teacher"):
        run_precompute(wider, progress=False)
    assert read_manifest(StoreLocation(cfg.store_url)) == before
