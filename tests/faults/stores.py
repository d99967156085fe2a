"""Building and reading the small stores the fault suite damages."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from kdcache.precompute import precompute
from kdcache.store import open_store
from kdcache.store.location import StoreLocation
from kdcache.targets import build_target

SHARD = 64  # 300 samples: shards of 64, 64, 64, 64, 44


def targets():
    """Dense fp16 logits (uncompressed shards) and a zstd-compressed feature map: both kinds of shard file."""
    return [build_target("logits", {}), build_target("features", {"layer": "layer2"})]


def build_store(path: Path | StoreLocation, teacher: torch.nn.Module, dataset, views, **kwargs) -> Path | StoreLocation:
    """Stage one of the suite's teacher into ``path`` (a local path or any store location)."""
    precompute(teacher, dataset, path, targets=targets(), views=views, num_classes=10, teacher_name="t8",
               shard_samples=SHARD, progress=False, **kwargs)  # fmt: skip
    return path


def read_everything(url: str | Path) -> dict[str, np.ndarray]:
    """Every committed array of a store, read through the stage-two reader (verified on first touch)."""
    cache = open_store(str(url))
    arrays = {path: cache.array_reader(rec, "samples", in_memory=True).read_all()
              for path, rec in cache.manifest.samples.arrays.items()}  # fmt: skip
    for name in cache.teachers:
        for target in cache.teacher(name).targets.values():
            for record in target.arrays.values():
                arrays[record.path] = cache.array_reader(record, f"teachers/{name}", in_memory=True).read_all()
    return arrays


def same_arrays(a: dict[str, np.ndarray], b: dict[str, np.ndarray]) -> bool:
    return a.keys() == b.keys() and all(np.array_equal(a[k], b[k], equal_nan=True) for k in a)


def edited_digits(tmp_path: Path, edit) -> str:  # noqa: ANN001 - edit takes an open h5py.File
    """A copy of the shipped digits file under the same name, with ``edit`` applied: only the content differs."""
    import shutil

    import h5py

    from tests.conftest import DIGITS

    copy = tmp_path / "edited" / "digits.h5"
    copy.parent.mkdir()
    shutil.copy(DIGITS, copy)
    with h5py.File(copy, "r+") as f:
        edit(f)
    return str(copy)
