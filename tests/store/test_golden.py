"""The store format is a contract: a store built from fixed inputs has pinned bytes wherever its numbers are exact.

The teacher, the data and the view normalisation are chosen so the forward pass is exact (small dyadic rationals):
the stored logits, features, int8 codes and scales, indices and digests do not depend on the BLAS, the CPU's
vectorised kernels (``ATEN_CPU_CAPABILITY``), the thread count or the summation order, so they are pinned. The
top-k log-sum-exp goes through exp and log, which no two kernel sets compute bit for bit: stage one computes it in
float64 and rounds it to float32 (docs/store-format.md, "Where byte identity holds"), and this test checks it
against a float64 reference of its own, to within the storage rounding (half a float32 ulp; the reference's own
float64 error is far smaller), instead of pinning it. tests/store/test_cpu_kernels.py checks that its bytes are
the same under ATen's default kernels and this machine's own.

What is pinned: the manifest byte for byte, except the library versions it records, the SHA-256 of each shard of a
not-pinned array and the digests that cover them (checked separately: the manifest must still verify on open);
every ``zarr.json`` byte for byte; and a SHA-256 of every other array's decoded contents.

Regenerate the golden files (only with a format-version bump) with one command, on any machine:
``KDCACHE_WRITE_GOLDEN=1 pytest tests/store/test_golden.py`` rewrites ``tests/store/golden/`` from a fresh build
and then runs every check against what it wrote.
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
from kdcache.precompute.engine import library_facts
from kdcache.store import FORMAT_VERSION, open_store
from kdcache.targets.floats import LSE_GRID

GOLDEN = Path(__file__).parent / "golden"
NOT_PINNED = ["teachers/golden/logits_topk/lse"]  # through exp/log: checked against a float64 reference instead
TEMPERATURES = (1.0, 4.0)
UNPINNED = [  # what the manifest records that is not pinned, as (pattern, placeholder, occurrences)
    (re.compile(rb'"library": \{[^}]*\}'), b'"library": {}', 1),  # the library versions and the digests over them
    (re.compile(rb'"library": "[0-9a-f]{64}"'), b'"library": "<digest of the versions>"', 1),
    (re.compile(rb'"digest": "[0-9a-f]{64}",\n "format_version"'), b'"digest": "<digest>",\n "format_version"', 1),
    # every shard's SHA-256 of the log-sum-exp (three shards of 16 samples) and the digest over the teacher's shards
    (
        re.compile(
            rb'("key": "teachers/golden/logits_topk/lse/c/[0-9/]+",\n\s*"nbytes": [0-9]+,\n\s*"sha256": ")'
            rb'[0-9a-f]{64}"'
        ),
        rb'\1<float64-derived bytes>"',
        3,
    ),  # fmt: skip
    (re.compile(rb'"teachers.golden.shards": "[0-9a-f]{64}"'), b'"teachers.golden.shards": "<digest>"', 1),
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
        build_target("logits", {"encoding": "topk", "k": 2, "temperatures": list(TEMPERATURES)}),
        build_target("logits", {"encoding": "int8"}),
        build_target("embedding", {"layer": "hidden", "dtype": "float32"}),
    ]
    precompute(GoldenTeacher().eval(), golden_dataset(), str(path), targets=targets, views=views, num_classes=5,
               teacher_name="golden", shard_samples=16, progress=False)  # fmt: skip
    return path


def store_documents(store: Path) -> dict[str, bytes]:
    """The manifest (what is not pinned blanked) and every zarr.json, by path relative to the store."""
    docs = {p.relative_to(store).as_posix(): p.read_bytes() for p in sorted(store.rglob("zarr.json"))}
    manifest = (store / "kdcache.manifest.json").read_bytes()
    for pattern, replacement, occurrences in UNPINNED:
        manifest, found = pattern.subn(replacement, manifest)
        assert found == occurrences, pattern
    docs["kdcache.manifest.json"] = manifest
    return docs


def array_digests(store: Path) -> dict[str, str]:
    group = zarr.open_group(str(store), mode="r")
    found: dict[str, str] = {}

    def visit(name: str, node) -> None:  # noqa: ANN001 - zarr node
        if isinstance(node, zarr.Array) and name not in NOT_PINNED:
            data = np.ascontiguousarray(node[:])
            found[name] = f"{data.dtype}{list(data.shape)}:{hashlib.sha256(data.tobytes()).hexdigest()}"

    for name, node in group.members(max_depth=None):
        visit(name, node)
    return dict(sorted(found.items()))


def reference_log_sum_exp(store: Path) -> tuple[np.ndarray, np.ndarray]:
    """The stored top-k log-sum-exp ``(N, V, T)`` and a float64 reference of it from the stored dense logits (exact
    dyadic numbers, pinned), after checking that the stored top-k values are those same logits."""
    group = zarr.open_group(str(store), mode="r")
    logits = np.asarray(group["teachers/golden/logits"][:], dtype=np.float64)
    top = np.take_along_axis(logits, np.asarray(group["teachers/golden/logits_topk/indices"][:], dtype=np.int64), -1)
    np.testing.assert_array_equal(np.asarray(group["teachers/golden/logits_topk/values"][:], np.float64), top)
    scaled = logits[..., None] / np.asarray(TEMPERATURES)  # (N, V, C, T)
    peak = scaled.max(axis=2)
    reference = peak + np.log(np.exp(scaled - peak[:, :, None]).sum(axis=2))
    return np.asarray(group[NOT_PINNED[0]][:]), reference


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
    stored, reference = reference_log_sum_exp(store)
    assert stored.shape == (40, 2, 2) and stored.dtype == np.float32
    # the storage rounding: half a float32 ulp, or half the grid near 0 (the reference's own error is ~1e-16)
    bound = 0.5 * np.spacing(np.abs(reference).astype(np.float32)) + LSE_GRID / 2
    assert (np.abs(stored - reference) <= bound).all(), np.abs(stored - reference).max()
    recorded = json.loads((store / "kdcache.manifest.json").read_bytes())["library"]
    assert recorded == library_facts()
    assert open_store(str(store)).manifest.format_version == FORMAT_VERSION  # its own digest verified on open
