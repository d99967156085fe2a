"""Tasks made of some classes of a dataset: the samples of those classes, relabelled 0..k-1 in the order listed."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from kdcache.datasets.base import SampleDataset, Subset
from kdcache.errors import ConfigError


class ClassSubset(Subset):
    """The samples of ``base`` whose label is in ``classes``, with label ``classes[j]`` renamed ``j``.

    Continual-learning tasks are built this way (Learning without Forgetting: old task digits 0-4, new task 5-9, each
    predicted by its own head over its own k classes). Samples keep the base order. The fingerprint records the class
    list, so a store made for one task is refused for another.

    >>> new_task = ClassSubset(HDF5Dataset(DIGITS_FILE, "train"), [5, 6, 7, 8, 9])  # doctest: +SKIP
    >>> new_task.all_labels()[:3]  # digits 5, 9, 7 are labels 0, 4, 2
    """

    def __init__(self, base: SampleDataset, classes: Sequence[int]) -> None:
        classes = [int(c) for c in classes]
        labels = base.all_labels()
        if labels.ndim != 1:
            raise ConfigError(
                f"class subsets need one class label per sample; split {base.split!r} has labels of shape "
                f"{labels.shape[1:]} per sample (segmentation masks). Leave data.classes unset for this dataset"
            )
        if len(set(classes)) != len(classes) or len(classes) < 2:
            raise ConfigError(f"classes must list at least two distinct labels, got {classes}")
        present = set(np.unique(labels).tolist())
        if missing := [c for c in classes if c not in present]:
            raise ConfigError(
                f"classes {missing} have no samples in split {base.split!r}, whose labels are "
                f"{sorted(present)}. Pick classes from those"
            )
        super().__init__(base, np.flatnonzero(np.isin(labels, classes)), tag=f"classes-{'-'.join(map(str, classes))}")
        self.classes = classes
        self._relabel = np.full(max(present) + 1, -1, dtype=np.int64)
        self._relabel[classes] = np.arange(len(classes))

    def get_batch(self, indices: np.ndarray) -> tuple[torch.Tensor | list[torch.Tensor], torch.Tensor]:
        inputs, labels = super().get_batch(indices)
        return inputs, torch.from_numpy(self._relabel[labels.numpy()])

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "classes": self.classes}

    def all_labels(self) -> np.ndarray:
        return self._relabel[super().all_labels()]
