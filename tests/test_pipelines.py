"""Every shipped distillation pipeline runs end to end on a CI-sized subset and reports every variant."""

from __future__ import annotations

import json

import pytest

from kdcache.comparison import run_pipeline
from kdcache.config import load_pipeline
from tests.conftest import ROOT

SUBSET = ["data.max_train_samples=256", "data.max_test_samples=128", "teacher.train.stages.0.epochs=5"]


def shrink_student(cfg_path, tmp_path) -> list[str]:
    """Overrides that cut every student stage to one epoch."""
    cfg = load_pipeline(cfg_path)
    return [f"student.train.stages.{i}.epochs=1" for i in range(len(cfg.student.train.stages))] + [
        f"output_dir={tmp_path}"
    ]


@pytest.mark.slow
@pytest.mark.parametrize("name", ["digits_kd", "digits_fsp", "digits_fitnets", "digits_rkd"])
def test_pipeline_runs_on_a_subset(tmp_path, name):
    path = ROOT / "pipelines" / f"{name}.yaml"
    cfg = load_pipeline(path, [*SUBSET, *shrink_student(path, tmp_path)])
    summary = run_pipeline(cfg, progress=False)
    assert set(summary["students"]) == {v.name for v in cfg.compare}
    for result in summary["students"].values():
        assert 0.0 <= result["test"]["accuracy"] <= 1.0
        assert len(result["curve"]) == sum(s.epochs for s in cfg.student.train.stages)
    assert summary["teacher"]["test"]["accuracy"] > 0.3  # five epochs on 256 digits beat chance (0.1) clearly
    assert summary["store"]["bytes"] > 0
    assert json.loads((tmp_path / "results.json").read_text())["pipeline"] == name
    assert (tmp_path / "curves.png").stat().st_size > 0
