"""A store made under one set of torch CPU kernels and read under another never trains silently.

torch picks its CPU kernels at start-up (``ATEN_CPU_CAPABILITY``: ``default`` scalar code, ``avx2``, ``avx512``).
Resampling ops round differently under the scalar kernels (docs/views.md has the measurement), so the same
(seed, sample, view) can give other pixels on another kind of CPU. Each side runs in its own process with the
capability set; reading must either give every view exactly as stage one made it, or be refused by the per-view
digest with the capability named in the fix.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torchvision
from torch import nn
from torchvision.transforms import v2

from kdcache import CachedDataset, batch_loader
from kdcache.errors import ViewMismatchError
from kdcache.precompute import precompute
from kdcache.store import open_store
from kdcache.targets import build_target
from kdcache.train import set_loader_epoch
from kdcache.views import ViewTransform
from tests.conftest import ROOT
from tests.helpers import write_image_folder

NATIVE = torch.backends.cpu.get_cpu_capability().lower()


def views() -> ViewTransform:
    pipeline = v2.Compose([v2.RandomResizedCrop(32, antialias=True), v2.RandAugment(), v2.RandomAffine(10)])
    return ViewTransform(
        count=3,
        seed=7,
        mean=(0.5, 0.5, 0.5),
        std=(0.25, 0.25, 0.25),
        pipeline=pipeline,
        eval=v2.Resize((32, 32), antialias=True),
    )


def build(images: str, store: str) -> None:
    folder = torchvision.datasets.ImageFolder(images)
    precompute(
        nn.Flatten(),
        folder,
        store,
        targets=[build_target("logits", {"dtype": "float32"})],
        views=views(),
        teacher_name="echo",
        shard_samples=16,
        progress=False,
    )


def read(images: str, store: str) -> dict[str, object]:
    """Train-loop reads over every cached view: how many inputs differ from the teacher's, or the refusal."""
    data = CachedDataset(torchvision.datasets.ImageFolder(images), open_store(store), views=views())
    loader = batch_loader(data, batch_size=8, seed=0)
    wrong = 0
    try:
        for epoch in range(3):
            set_loader_epoch(loader, epoch)
            for batch in loader:
                batch = batch.to("cpu")
                wrong += int((batch.inputs.flatten(1) != batch.targets["logits"]).any(dim=1).sum())
    except ViewMismatchError as exc:
        return {"refused": str(exc)}
    return {"wrong": wrong, "capability": torch.backends.cpu.get_cpu_capability()}


def run(step: str, capability: str, images: Path, store: Path) -> dict[str, object]:
    env = {**os.environ, "ATEN_CPU_CAPABILITY": capability, "OMP_NUM_THREADS": "1"}
    code = (
        f"import json, tests.views.test_cpu_kernels as t; print(json.dumps(t.{step}({str(images)!r}, {str(store)!r})))"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, result.stderr[-2000:]
    return json.loads(result.stdout.strip().splitlines()[-1]) if step == "read" else {}


@pytest.mark.parametrize("made, read_under", [("default", NATIVE), (NATIVE, "default")])
def test_views_made_under_other_cpu_kernels_are_exact_or_refused(made, read_under, tmp_path):
    images = write_image_folder(tmp_path / "images")
    store = tmp_path / "store.zarr"
    run("build", made, images, store)
    found = run("read", read_under, images, store)
    if "refused" in found:  # the kernels rounded differently: the digest says so, and names the fix
        assert f"ATEN_CPU_CAPABILITY={made}" in found["refused"], found
    else:
        assert found["wrong"] == 0, found  # the same bytes under both: every view is the teacher's input
