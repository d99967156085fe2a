"""Mismatches: a store used with the wrong dataset (length, order, content), teacher (architecture, weights), view
spec, class count or target shape, or an incomplete store, is refused before training starts; the one override
that makes sense (train from a stored teacher that the pipeline's checkpoint no longer matches) is explicit and
logged."""

from __future__ import annotations

import logging
import shutil

import pytest

from kdcache.errors import KdcacheError, StoreIncompleteError, StoreMismatchError
from kdcache.pipeline import parse_pipeline
from kdcache.pipeline.distill import run_precompute, train_student
from kdcache.store import read_manifest
from kdcache.store.location import StoreLocation
from kdcache.store.manifest import write_manifest
from tests.conftest import with_changes
from tests.faults.ledger import Outcome, clear_error, record
from tests.faults.stores import edited_digits


def reverse_order(f) -> None:
    for key in ("train/images", "train/labels"):
        f[key][...] = f[key][()][::-1]


def flip_pixel(f) -> None:
    f["train/images"][0, 3, 3] = 16 - f["train/images"][0, 3, 3]


def incomplete(raw: dict) -> None:
    location = StoreLocation(parse_pipeline(raw).store_url)
    manifest = read_manifest(location)
    teacher = manifest.teachers["cnn16"]
    manifest.teachers["cnn16"] = teacher.model_copy(update={"status": "building", "shards": teacher.shards[:1]})
    write_manifest(location, manifest)


FSP_STUDENT = {"model": {"arch": "digits-cnn", "args": {"width": 2}},
               "train": {"batch_size": 32, "stages": [{"epochs": 1, "losses": [{"name": "fsp", "pairs": [["layer1", "layer2"]]}]}]}}  # fmt: skip

CASES = {
    "dataset-length": (lambda tmp, raw: with_changes(raw, data__max_train_samples=200), "holds 240 samples"),
    "dataset-order": (lambda tmp, raw: with_changes(raw, data__args={"path": edited_digits(tmp, reverse_order)}), "different dataset"),
    "dataset-content": (lambda tmp, raw: with_changes(raw, data__args={"path": edited_digits(tmp, flip_pixel)}), "content_sha256"),
    "teacher-architecture": (lambda tmp, raw: with_changes(raw, teacher__model={"arch": "digits-cnn", "args": {"width": 12}}), "architecture"),
    "view-spec": (lambda tmp, raw: with_changes(raw, data__std=[0.5]), "other views"),
    "class-count": (lambda tmp, raw: with_changes(raw, data__num_classes=11), "has 10 classes"),
    "target-shape": (lambda tmp, raw: with_changes(raw, student=FSP_STUDENT, cache__targets=[{"kind": "logits"}, {"kind": "fsp", "layers": ["layer1", "layer2"]}]), "equal channel counts"),
    "unknown-teacher": (lambda tmp, raw: with_changes(raw, teacher__name="cnn99"), "no teacher 'cnn99'"),
}  # fmt: skip


@pytest.mark.slow
@pytest.mark.parametrize("case", list(CASES))
def test_a_mismatched_store_is_refused_before_training(tmp_path, built, case):
    change, phrase = CASES[case]
    raw = with_changes(change(tmp_path, built), output_dir=built["output_dir"])
    if case == "target-shape":  # the fsp target must exist in a store made by this teacher for the same data
        raw = with_changes(raw, output_dir=str(tmp_path / "fsp"))
        run_precompute(parse_pipeline(with_changes(raw, student=built["student"])), progress=False)
    cfg = parse_pipeline(raw)
    outcome = Outcome("mismatch", case)
    with pytest.raises(KdcacheError) as raised:
        train_student(cfg, "cached", progress=False)
    outcome.detected = clear_error(raised.value, phrase)
    outcome.silent_wrong = (cfg.out / "checkpoints" / "student-cached.state.safetensors").exists()  # it trained
    assert record(outcome).passed, (outcome, str(raised.value))


@pytest.mark.slow
def test_an_incomplete_store_is_refused(tmp_path, built):
    raw = with_changes(built, output_dir=str(tmp_path / "copy"))
    shutil.copytree(parse_pipeline(built).out, tmp_path / "copy")
    incomplete(raw)
    outcome = Outcome("mismatch", "incomplete-store")
    with pytest.raises(StoreIncompleteError) as raised:
        train_student(parse_pipeline(raw), "cached", progress=False)
    outcome.detected = clear_error(raised.value, "1/2 shards committed", "kdcache precompute")
    assert record(outcome).passed, outcome


@pytest.mark.slow
def test_other_teacher_weights_are_refused_unless_the_logged_override_is_set(tmp_path, built, caplog):
    raw = with_changes(built, output_dir=str(tmp_path / "copy"))
    shutil.copytree(parse_pipeline(built).out, tmp_path / "copy")
    cfg = parse_pipeline(raw)
    cfg.teacher_checkpoint.unlink()
    retrained = with_changes(raw, seed=7)  # a teacher trained again from another seed: same architecture
    from kdcache.pipeline.teacher import ensure_teacher

    ensure_teacher(parse_pipeline(retrained), progress=False)
    outcome = Outcome("mismatch", "teacher-weights")
    with pytest.raises(StoreMismatchError) as raised:
        train_student(cfg, "cached", progress=False)
    outcome.detected = clear_error(raised.value, "weights", "allow_teacher_mismatch")
    with caplog.at_level(logging.WARNING):
        train_student(parse_pipeline(with_changes(raw, cache__allow_teacher_mismatch=True)), "cached", progress=False)
    outcome.recovered = "allow_teacher_mismatch is set" in caplog.text
    assert record(outcome).passed, (outcome, str(raised.value))
