"""Importable factories for stage-one tests: what a user's own module would hold (a teacher and a dataset)."""

from __future__ import annotations

import numpy as np
import torch

from kdcache.datasets import HDF5Dataset, Subset
from kdcache.models import DigitsCNN


def digits_teacher(width: int = 8, seed: int = 0) -> torch.nn.Module:
    """A seeded, untrained digits CNN: the same weights in every process that builds it."""
    torch.manual_seed(seed)
    return DigitsCNN(10, width=width).eval()


def digits_train(path: str, limit: int = 300) -> Subset:
    """The first ``limit`` training digits of the HDF5 file at ``path``."""
    return Subset(HDF5Dataset(path, "train"), np.arange(limit), tag=f"first-{limit}")
