"""The CLI end to end on a subset: run, inspect, then train from the store with the teacher checkpoint gone."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.helpers import kdcache, with_sets

SMALL = [
    "data.max_train_samples=240",
    "data.max_test_samples=120",
    "teacher.train.stages.0.epochs=4",
    "student.train.stages.0.epochs=2",
    "cache.shard_samples=128",
]


@pytest.mark.slow
def test_run_inspect_and_train_without_teacher(tmp_path: Path):
    out = tmp_path / "run"
    sets = [*SMALL, f"output_dir={out}"]
    result = kdcache("run", "pipelines/digits_kd.yaml", "--quiet", *with_sets(sets))
    assert result.returncode == 0, result.stderr
    for row in ("teacher", "student (scratch)", "student (online)", "student (cached)", "bytes / sample"):
        assert row in result.stdout
    summary = json.loads((out / "results.json").read_text())
    assert set(summary["students"]) == {"scratch", "online", "cached"}
    assert summary["teacher"]["test"]["accuracy"] > 0.5
    assert summary["store"]["bytes"] > 240 * 20  # at least the fp16 logits themselves
    for png in ("curves.png", "storage.png"):
        assert (out / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    inspected = kdcache("inspect", str(out / "cache" / "train.zarr"), "--png", str(tmp_path / "inspect.png"))
    assert inspected.returncode == 0, inspected.stderr
    for text in ("status: complete", "cnn64", "logits", "(240, 1, 10)", "float16", "inspect.png"):
        assert text in inspected.stdout
    assert (tmp_path / "inspect.png").read_bytes() == (out / "storage.png").read_bytes()  # one plot, two commands

    (out / "teacher.safetensors").unlink()
    trained = kdcache("train", "pipelines/digits_kd.yaml", "--quiet", *with_sets([*sets, "teacher.train=null"]))
    assert trained.returncode == 0, trained.stderr
    assert "student (cached): accuracy" in trained.stdout
    assert not (out / "teacher.safetensors").exists()  # stage two never built (or retrained) the teacher


def test_cli_reports_errors_without_a_traceback(tmp_path: Path):
    result = kdcache("inspect", str(tmp_path / "missing.zarr"))
    assert result.returncode == 2
    assert "kdcache: error: store" in result.stderr and "does not exist" in result.stderr
    assert "Traceback" not in result.stderr


@pytest.mark.parametrize(
    ("sets", "message"),
    [
        (
            ["student.model.arch=kdcache.models.digits:DigitsCNN", "student.model.args={width: 2, num_classes: 5}"],
            "the student outputs 5 classes (logits of shape (32, 5)), but the task has 10: build the student with "
            "num_classes=10",
        ),
        (["data.num_classes=5"], "the labels reach class 9, but the task has 5 classes (0..4)"),
    ],
    ids=["student-num-classes", "data-num-classes"],
)
def test_a_student_with_too_few_classes_is_refused_before_training(tmp_path: Path, sets: list[str], message: str):
    """Cross-entropy used to end this run with ``IndexError: Target 7 is out of bounds`` and a traceback."""
    small = [
        "data.max_train_samples=64",
        "data.max_test_samples=32",
        "student.train.batch_size=32",
        "student.train.stages.0.epochs=1",
        f"output_dir={tmp_path}",
    ]
    result = kdcache("train", "pipelines/digits_kd.yaml", "--variant", "scratch", "--quiet", *with_sets(small + sets))
    assert result.returncode == 2, result.stderr
    assert message in result.stderr and "Traceback" not in result.stderr
