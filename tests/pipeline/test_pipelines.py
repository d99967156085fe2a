"""The shipped distillation pipelines reach their figures: digits_kd in full (the README's table, same seed and
thread count), the others end to end on a CI-sized subset with cached KD tracking the live teacher."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from kdcache.pipeline import load_pipeline, run_pipeline
from tests.conftest import ROOT

SUBSET = ["data.max_train_samples=256", "data.max_test_samples=128", "teacher.train.stages.0.epochs=5"]


def shrink_student(cfg_path, tmp_path) -> list[str]:
    """Overrides that cut every student stage to one epoch."""
    cfg = load_pipeline(cfg_path)
    return [f"student.train.stages.{i}.epochs=1" for i in range(len(cfg.student.train.stages))] + [
        f"output_dir={tmp_path}"
    ]


@pytest.mark.slow
def test_digits_kd_cached_student_beats_scratch_and_matches_online(tmp_path):
    """The full ``make run`` pipeline (seed 0): teacher 99.07%, scratch 97.59%, online and cached 98.33% here.
    (Its wall times are a benchmark's business: timed under load they say nothing.)"""
    cfg = load_pipeline(ROOT / "pipelines" / "digits_kd.yaml", [f"output_dir={tmp_path}"])
    summary = run_pipeline(cfg, progress=False)
    accuracy = {name: s["test"]["accuracy"] for name, s in summary["students"].items()}
    assert summary["teacher"]["test"]["accuracy"] >= 0.985
    assert accuracy["cached"] >= accuracy["scratch"] + 0.005  # at least 0.5 points (measured: +0.74)
    assert abs(accuracy["cached"] - accuracy["online"]) <= 0.01  # cached targets are the live ones up to fp16
    assert summary["store"]["target_bytes_per_sample"]["logits"] < 40  # 20 B of fp16 logits plus edge padding


@pytest.mark.slow
@pytest.mark.parametrize("name", ["digits_fsp", "digits_fitnets", "digits_rkd"])
def test_pipeline_runs_on_a_subset(tmp_path, name):
    path = ROOT / "pipelines" / f"{name}.yaml"
    cfg = load_pipeline(path, [*SUBSET, *shrink_student(path, tmp_path)])
    summary = run_pipeline(cfg, progress=False)
    students = summary["students"]
    assert set(students) == {"scratch", "online", "cached"}
    for result in students.values():
        assert len(result["curve"]) == sum(s.epochs for s in cfg.student.train.stages)
    assert summary["teacher"]["test"]["accuracy"] > 0.3  # five epochs on 256 digits beat chance (0.1) clearly
    # same seed, same batches, targets equal up to fp16: the cached student follows the live-teacher one
    assert abs(students["cached"]["test"]["accuracy"] - students["online"]["test"]["accuracy"]) <= 0.04
    assert summary["store"]["bytes"] > 256 * 20
    assert json.loads((tmp_path / "results.json").read_text())["pipeline"] == name
    assert (tmp_path / "curves.png").read_bytes()[:4] == b"\x89PNG"


@pytest.mark.slow
def test_mnist_resnet_runs_on_real_digits_written_as_png(tmp_path):
    """The open-world pipeline as a user runs it: the data script writes real MNIST PNGs (30 per class here), an
    ImageFolder reads them, a torchvision ResNet-18 teaches, the v2 pipeline's views are replayed from the store."""
    data = tmp_path / "mnist-png"
    script = ROOT / "data" / "make_mnist_png.py"
    subprocess.run([sys.executable, script, "--out", data, "--train-per-class", "30"], check=True, timeout=300)
    assert len(list((data / "train").glob("*/*.png"))) == 300 and len(list((data / "test").glob("*/*.png"))) == 1000
    path = ROOT / "pipelines" / "mnist_resnet.yaml"
    overrides = [
        f"data.splits.train.root={data / 'train'}",
        f"data.splits.test.root={data / 'test'}",
        "data.max_test_samples=1000",
        "teacher.train.stages.0.epochs=3",
        "views.count=2",
    ]
    summary = run_pipeline(load_pipeline(path, [*overrides, *shrink_student(path, tmp_path)]), progress=False)
    assert set(summary["students"]) == {"scratch", "online", "cached-1view", "cached-8views"}
    assert summary["teacher"]["test"]["accuracy"] > 0.5  # three epochs on 300 real digits, tested on 1,000
    assert summary["store"]["target_bytes_per_sample"]["logits"] < 2 * 40  # two views of 20 B fp16 logits
    # every cached (sample, view) pair re-made from its seed and re-run through the teacher equals the store bitwise
    sets = [arg for override in overrides + shrink_student(path, tmp_path) for arg in ("--set", override)]
    verify = [sys.executable, "-m", "kdcache", "verify", summary["store"]["url"], "--recompute", "16"]
    done = subprocess.run([*verify, "--pipeline", path, *sets], capture_output=True, text=True, timeout=600)
    assert done.returncode == 0 and "16/16" in done.stdout, done.stdout + done.stderr
