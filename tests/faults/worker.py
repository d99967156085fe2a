"""Stage one in a child process for crash drills, slowed so that a kill lands mid-run.

    python -m tests.faults.worker STORE TEACHER.safetensors [--break-lock]

Prints ``ready`` once the teacher is loaded; exits 130 on Ctrl-C (SIGINT), like the CLI.
"""

from __future__ import annotations

import sys
import time

import numpy as np

from kdcache.checkpoint import load_model
from kdcache.datasets import HDF5Dataset, SampleDataset, Subset
from kdcache.models import DigitsCNN
from kdcache.precompute import precompute
from kdcache.views import ViewTransform
from tests.conftest import DIGITS, MEAN, STD
from tests.faults.stores import targets

SHARD, BATCH, DELAY = 32, 16, 0.05  # 300 samples: 10 shards; ~1 s of slowed teacher work in all


class Slow(SampleDataset):
    """A dataset whose batches take ``DELAY`` seconds longer: time for a kill to land between commits."""

    def __init__(self, base: SampleDataset) -> None:
        self.base, self.split = base, base.split

    def __len__(self) -> int:
        return len(self.base)

    def get_batch(self, indices):
        time.sleep(DELAY)
        return self.base.get_batch(indices)

    def describe(self):
        return self.base.describe()

    def all_labels(self):
        return self.base.all_labels()


def dataset() -> SampleDataset:
    return Subset(HDF5Dataset(DIGITS, "train"), np.arange(300), tag="first-300")


def run(store: str, teacher_path: str, *, slow: bool, break_lock: bool) -> None:
    teacher = load_model(DigitsCNN(10, width=8), teacher_path).eval()
    data = Slow(dataset()) if slow else dataset()
    views = ViewTransform(count=1, seed=0, mean=MEAN, std=STD)
    print("ready", flush=True)
    precompute(teacher, data, store, targets=targets(), views=views, num_classes=10, teacher_name="t8",
               shard_samples=SHARD, batch_size=BATCH, progress=False, break_lock=break_lock)  # fmt: skip


if __name__ == "__main__":
    try:
        run(sys.argv[1], sys.argv[2], slow=True, break_lock="--break-lock" in sys.argv)
    except KeyboardInterrupt:
        sys.exit(130)
