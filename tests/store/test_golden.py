"""The store format is a contract: a store built from fixed inputs has pinned bytes.

The teacher, the data and the view normalisation are chosen so every float is exact (small dyadic rationals), so
the stored logits, features and digests do not depend on the BLAS, the thread count or the summation order. What
is pinned: the manifest byte for byte (except the library versions it records and the two digests that cover them,
checked separately: the manifest must still verify), every
``zarr.json`` byte for byte, and a SHA-256 of every array's decoded contents. Regenerate the golden files only with
a format-version bump: ``KDCACHE_WRITE_GOLDEN=1 pytest tests/store/test_golden.py``.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from pathlib import Path

import numpy as np
import torch
import zarr
from torch import nn

from kdcache import TensorDataset, ViewTransform, build_target, build_view_op, precompute
from kdcache.store import FORMAT_VERSION, library_versions, open_cache

GOLDEN = Path(__file__).parent / "golden"
VERSION_DEPENDENT = [  # the library versions the manifest records, and the digests that cover them
    (re.compile(rb'"library": \{[^}]*\}'), b'"library": {}'),
    (re.compile(rb'"library": "[0-9a-f]{64}"'), b'"library": "<digest of the versions>"'),
    (re.compile(rb'"digest": "[0-9a-f]{64}",\n "format_version"'), b'"digest": "<digest>",\n "format_version"'),
]


class GoldenTeacher(nn.Module):
    """Flatten 1x4x4 -> 8 hidden (ReLU) -> 5 classes, every weight a multiple of 1/4 in [-1, 1]."""

    def __init__(self) -> None:
        super().__init__()
        self.flatten = nn.Flatten()
        self.hidden = nn.Sequential(nn.Linear(16, 8), nn.ReLU())
        self.fc = nn.Linear(8, 5)
        rng = np.random.default_rng(20261129)
        with torch.no_grad():
            for param in self.parameters():
                param.copy_(torch.from_numpy(rng.integers(-4, 5, size=tuple(param.shape)) / 4.0))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.hidden(self.flatten(x)))


def golden_dataset() -> TensorDataset:
    rng = np.random.default_rng(7)
    images = torch.from_numpy(rng.integers(0, 17, size=(40, 1, 4, 4)) / 16.0).float()
    labels = torch.from_numpy(rng.integers(0, 5, size=40))
    return TensorDataset(images, labels, split="train", source={"kind": "golden"})


def build_golden_store(path: Path) -> Path:
    views = ViewTransform(
        count=2, seed=3, mean=(0.5,), std=(0.25,), augment=[build_view_op("horizontal_flip", {"p": 0.5})]
    )
    targets = [
        build_target("logits", {"dtype": "float16"}),
        build_target("logits", {"encoding": "topk", "k": 2, "temperatures": [1.0, 4.0]}),
        build_target("logits", {"encoding": "int8"}),
        build_target("embedding", {"layer": "hidden", "dtype": "float32"}),
    ]
    precompute(GoldenTeacher().eval(), golden_dataset(), str(path), targets=targets, views=views, num_classes=5,
               teacher_name="golden", shard_samples=16, progress=False)  # fmt: skip
    return path


def store_documents(store: Path) -> dict[str, bytes]:
    """The manifest (library versions blanked) and every zarr.json, by path relative to the store."""
    docs = {p.relative_to(store).as_posix(): p.read_bytes() for p in sorted(store.rglob("zarr.json"))}
    manifest = (store / "kdcache.manifest.json").read_bytes()
    for pattern, replacement in VERSION_DEPENDENT:
        manifest, found = pattern.subn(replacement, manifest)
        assert found == 1, pattern
    docs["kdcache.manifest.json"] = manifest
    return docs


def array_digests(store: Path) -> dict[str, str]:
    group = zarr.open_group(str(store), mode="r")
    found: dict[str, str] = {}

    def visit(name: str, node) -> None:  # noqa: ANN001 - zarr node
        if isinstance(node, zarr.Array):
            data = np.ascontiguousarray(node[:])
            found[name] = f"{data.dtype}{list(data.shape)}:{hashlib.sha256(data.tobytes()).hexdigest()}"

    for name, node in group.members(max_depth=None):
        visit(name, node)
    return dict(sorted(found.items()))


def test_store_bytes_are_pinned(tmp_path: Path) -> None:
    store = build_golden_store(tmp_path / "golden.zarr")
    docs, digests = store_documents(store), array_digests(store)
    if os.environ.get("KDCACHE_WRITE_GOLDEN"):
        for rel, raw in docs.items():
            (GOLDEN / rel).parent.mkdir(parents=True, exist_ok=True)
            (GOLDEN / rel).write_bytes(raw)
        (GOLDEN / "array-digests.json").write_text(json.dumps(digests, indent=1) + "\n")
    expected_docs = {p.relative_to(GOLDEN).as_posix(): p.read_bytes() for p in sorted(GOLDEN.rglob("*")) if p.is_file()}
    expected_digests = json.loads(expected_docs.pop("array-digests.json"))
    assert sorted(docs) == sorted(expected_docs)
    for rel, raw in docs.items():
        assert raw == expected_docs[rel], f"{rel} changed: the store format is a contract (bump format_version)"
    assert digests == expected_digests
    recorded = json.loads((store / "kdcache.manifest.json").read_bytes())["library"]
    assert recorded == library_versions()
    assert open_cache(str(store)).manifest.format_version == FORMAT_VERSION  # its own digest verified on open
