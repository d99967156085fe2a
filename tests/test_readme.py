"""The README's Python example runs as written — a torchvision teacher from a ``.pt`` state dict, an ImageFolder of
PNG files, a v2 pipeline, a plain DataLoader loop — and trains a student from the cache alone."""

from __future__ import annotations

import re

import numpy as np
import torch
import torchvision

from kdcache import kd_divergence
from kdcache.store import open_store
from tests.conftest import ROOT
from tests.helpers import write_image_folder


def test_readme_python_example_runs(tmp_path, monkeypatch):
    text = (ROOT / "README.md").read_text()
    (code,) = re.findall(r"```python\n(.*?)```", text, flags=re.S)
    write_image_folder(tmp_path / "photos" / "train", classes=3, per_class=8)
    torch.manual_seed(0)
    torch.save(torchvision.models.resnet50(num_classes=3).state_dict(), tmp_path / "teacher.pt")
    monkeypatch.chdir(tmp_path)
    torch.manual_seed(1)
    untrained = torchvision.models.resnet18(num_classes=3)
    torch.manual_seed(1)  # the example's student starts from these weights

    ns: dict = {}
    exec(compile(code, "README.md", "exec"), ns)
    cache = open_store("runs/photos.zarr")
    assert cache.manifest.status == "complete" and cache.manifest.num_samples == 24
    train = ns["train"]
    batch = train[np.arange(len(train))].to("cpu")  # the clean views of this epoch's cycle, with their targets
    with torch.no_grad():  # batch statistics: a few steps leave BatchNorm's running estimates far from converged
        trained = float(kd_divergence(ns["student"].train()(batch.inputs), batch.targets["logits"], 4.0))
        before = float(kd_divergence(untrained.train()(batch.inputs), batch.targets["logits"], 4.0))
    assert trained < 0.5 * before  # the student learned the cached teacher's distribution
