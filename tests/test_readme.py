"""The README's Python example runs as written and trains a student from the cache alone."""

from __future__ import annotations

import re
import shutil

import numpy as np
import torch

from kdcache import kd_divergence
from kdcache.models import DigitsCNN
from kdcache.pipeline import parse_pipeline
from kdcache.pipeline.teacher import ensure_teacher
from tests.conftest import ROOT, pipeline_dict


def test_readme_python_example_runs(tmp_path, monkeypatch):
    text = (ROOT / "README.md").read_text()
    (code,) = re.findall(r"```python\n(.*?)```", text, flags=re.S)
    (tmp_path / "data").mkdir()
    shutil.copy(ROOT / "data" / "digits.h5", tmp_path / "data" / "digits.h5")
    monkeypatch.chdir(tmp_path)
    wide = {"arch": "digits-cnn", "args": {"width": 64}}  # the example's teacher, briefly trained
    ensure_teacher(
        parse_pipeline(pipeline_dict(tmp_path / "runs", teacher__model=wide, output_dir="runs/digits_kd")),
        progress=False,
    )

    ns: dict = {}
    exec(compile(code, "README.md", "exec"), ns)
    assert (tmp_path / "runs/api/train.zarr/kdcache.manifest.json").is_file()
    raw, _ = ns["train"].get_batch(np.arange(len(ns["train"])))
    inputs = ns["views"](raw, None, None)
    torch.manual_seed(0)
    with torch.no_grad():
        target = ns["teacher"].eval()(inputs)
        trained = float(kd_divergence(ns["student"].eval()(inputs), target, 4.0))
        untrained = float(kd_divergence(DigitsCNN(10, width=4).eval()(inputs), target, 4.0))
    assert trained < 0.5 * untrained  # the student learned the cached teacher's distribution
