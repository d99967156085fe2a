"""Helpers shared by test modules: the CLI in a subprocess, store file listings, a dataset that interrupts, a
checkpoint snapshot taken mid-run."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import torch

from kdcache.datasets.base import SampleDataset
from kdcache.train import Batch, TargetSource, batch_targets
from tests.conftest import ROOT


def kdcache(*args: str) -> subprocess.CompletedProcess:
    """The CLI in a subprocess with this process's torch thread count, so its float results can be compared bitwise."""
    env = {**os.environ, "OMP_NUM_THREADS": str(torch.get_num_threads())}
    return subprocess.run(
        [sys.executable, "-m", "kdcache", *args], cwd=ROOT, capture_output=True, text=True, timeout=600, env=env
    )


def with_sets(sets: list[str]) -> list[str]:
    return [arg for s in sets for arg in ("--set", s)]


class Interrupting(SampleDataset):
    """Wraps a dataset and raises KeyboardInterrupt (Ctrl-C) on the first batch lying wholly at or past ``stop_at``."""

    def __init__(self, base: SampleDataset, stop_at: int) -> None:
        self.base, self.stop_at, self.split = base, stop_at, base.split

    def __len__(self) -> int:
        return len(self.base)

    def get_batch(self, indices):
        if np.asarray(indices).min() >= self.stop_at:
            raise KeyboardInterrupt
        return self.base.get_batch(indices)

    def describe(self):
        return self.base.describe()

    def all_labels(self):
        return self.base.all_labels()


def store_files(root: Path) -> dict[str, bytes]:
    """Every data file of the store (shards and zarr metadata), not kdcache's own commit bookkeeping."""
    return {
        str(p.relative_to(root)): p.read_bytes()
        for p in sorted(root.rglob("*"))
        if p.is_file() and ".kdcache" not in p.parts
    }


def all_files(root: Path) -> dict[str, bytes]:
    """Every file of a store: shards, zarr metadata, the manifest and the per-shard commit records."""
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def write_image_folder(root: Path, *, classes: int = 3, per_class: int = 8, seed: int = 0) -> Path:
    """An ImageFolder tree of RGB PNGs of varying sizes (20..40 px a side), each class a different mean colour."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    for c in range(classes):
        (root / f"class_{c}").mkdir(parents=True, exist_ok=True)
        for k in range(per_class):
            height, width = (int(s) for s in rng.integers(20, 41, size=2))
            pixels = rng.normal(60 + 60 * c, 40, size=(height, width, 3)).clip(0, 255).astype(np.uint8)
            Image.fromarray(pixels).save(root / f"class_{c}" / f"{k:03d}.png")
    return root


class SnapshotAt:
    """A target source (``source``: by default the batch's own cached targets, ``{}`` without a store) that copies
    the checkpoint when training step ``at`` begins: what a crash during that step would leave behind, while the run
    itself goes on to be the uninterrupted reference."""

    def __init__(self, checkpoint: Path, copy: Path, at: int, source: TargetSource = batch_targets) -> None:
        self.checkpoint, self.copy, self.at, self.calls, self.source = checkpoint, copy, at, 0, source

    def __call__(self, batch: Batch) -> dict:
        if torch.is_grad_enabled():  # not the trainer's preflight of a stage: a training step
            self.calls += 1
            if self.calls == self.at:
                shutil.copy(self.checkpoint, self.copy)
        return self.source(batch)

    def resume_record(self) -> dict:
        """The wrapped source's pinned settings (a live teacher's), so the checkpoints pin the run they belong to."""
        return getattr(self.source, "resume_record", dict)()


def record_rank_outcome(rank: int, out: str, train: object) -> None:
    """Run one DDP rank's ``train()`` and write what happened to ``<out>/rank<rank>.json`` (the error's type and
    message, or "trained") for the parent test to judge; the process group is destroyed either way."""
    import json

    import torch.distributed as dist

    try:
        train()  # type: ignore[operator]
        outcome = {"type": None, "message": "trained"}
    except Exception as exc:  # noqa: BLE001 - recorded for the parent test to judge
        outcome = {"type": type(exc).__name__, "message": str(exc)}
    finally:
        dist.destroy_process_group()
    Path(out, f"rank{rank}.json").write_text(json.dumps(outcome))
