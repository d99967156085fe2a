"""Dataset adapters, looked up by name from pipeline files."""

from __future__ import annotations

from typing import Any

from kdcache.datasets.base import SampleDataset, Subset, TensorDataset
from kdcache.datasets.classes import ClassSubset
from kdcache.datasets.digits_seg import DigitsSegmentation
from kdcache.datasets.hdf5 import HDF5Dataset
from kdcache.datasets.text import TextDataset, text_dataset
from kdcache.datasets.voc import VOCSegmentation
from kdcache.registry import Registry

DATASETS: Registry[Any] = Registry("dataset")
DATASETS.register("hdf5")(HDF5Dataset)
DATASETS.register("digits-seg")(DigitsSegmentation)
DATASETS.register("voc")(VOCSegmentation)
DATASETS.register("text")(text_dataset)


@DATASETS.register("digits")
def digits(split: str, *, path: str = "data/digits.h5") -> HDF5Dataset:
    """The shipped UCI digits (8x8, 10 classes), 1,257 train / 540 test samples."""
    return HDF5Dataset(path, split)


def build_dataset(name: str, split: str, args: dict[str, Any]) -> SampleDataset:
    """Instantiate the registered dataset ``name`` for ``split`` with keyword ``args`` from the pipeline."""
    return DATASETS.get(name)(split, **args)


__all__ = [
    "DATASETS",
    "ClassSubset",
    "DigitsSegmentation",
    "HDF5Dataset",
    "SampleDataset",
    "Subset",
    "TensorDataset",
    "TextDataset",
    "VOCSegmentation",
    "build_dataset",
]
