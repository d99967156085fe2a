"""Datasets: kdcache's batched contract (:class:`SampleDataset`), adapters, and the names pipeline files use.

A pipeline names a registered dataset (``digits``, ``hdf5``, ``digits-seg``, ``voc``, ``text``, ``chat``; called with the split and its
arguments) or an import path of any callable returning a map-style ``torch.utils.data.Dataset`` of ``(image, label)``
items (``torchvision.datasets:ImageFolder``, ``torchvision.datasets:CIFAR10``, a user's own), wrapped in
:class:`ItemDataset`."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from kdcache.datasets.base import SampleDataset, Subset, TensorDataset
from kdcache.datasets.chat import ChatDataset, chat_dataset
from kdcache.datasets.classes import ClassSubset
from kdcache.datasets.digits_seg import DigitsSegmentation
from kdcache.datasets.hdf5 import DIGITS_FILE, HDF5Dataset
from kdcache.datasets.items import ItemDataset, as_sample_dataset
from kdcache.datasets.text import TextDataset, text_dataset
from kdcache.datasets.voc import VOCSegmentation
from kdcache.errors import ConfigError
from kdcache.registry import Registry, is_import_path

DATASETS: Registry[Any] = Registry("dataset")
DATASETS.register("digits-seg")(DigitsSegmentation)
DATASETS.register("voc")(VOCSegmentation)
DATASETS.register("text")(text_dataset)
DATASETS.register("chat")(chat_dataset)


@DATASETS.register("hdf5")
def hdf5(split: str, *, path: str, **options: Any) -> HDF5Dataset:
    """One split of any HDF5 file: ``{dataset: hdf5, args: {path: data.h5, images: "{split}/x", layout: NHWC}}``."""
    return HDF5Dataset(path, split, **options)


@DATASETS.register("digits")
def digits(split: str, *, path: str | Path = DIGITS_FILE, **options: Any) -> HDF5Dataset:
    """The UCI digits (8x8, 10 classes), 1,257 train / 540 test samples, shipped with kdcache; ``options`` are
    :class:`HDF5Dataset`'s (``layout``, ``pixel_max``, ...)."""
    return HDF5Dataset(path, split, **options)


def build_dataset(name: str, split: str, args: dict[str, Any]) -> SampleDataset:
    """The dataset ``name`` for ``split``: a registered one called with the split and ``args``, or an import path
    called with ``args`` alone (per-split arguments such as ``root`` or ``train`` are merged in by the caller)."""
    factory = DATASETS.resolve(name)
    if not is_import_path(name):
        try:
            return factory(split, **args)
        except TypeError as exc:
            raise ConfigError(f"dataset {name!r} rejected its arguments {args}: {exc}") from None
    try:
        made = factory(**args)
    except TypeError as exc:
        raise ConfigError(f"dataset {name!r} rejected its arguments {args}: {exc}") from None
    except (OSError, RuntimeError) as exc:  # a missing root, a download refused: the library's own words
        raise ConfigError(f"dataset {name!r} with {args} could not be opened: {exc}") from None
    return as_sample_dataset(made, split=split)


__all__ = [
    "DATASETS",
    "DIGITS_FILE",
    "ChatDataset",
    "ClassSubset",
    "DigitsSegmentation",
    "HDF5Dataset",
    "ItemDataset",
    "SampleDataset",
    "Subset",
    "TensorDataset",
    "TextDataset",
    "VOCSegmentation",
    "as_sample_dataset",
    "build_dataset",
]
