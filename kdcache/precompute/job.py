"""What stage one runs: a frozen teacher over every (sample, view) of a dataset, producing named targets.

A :class:`StageOneJob` holds the teacher and the dataset as objects or as :class:`~kdcache.registry.Factory`
import paths. In one process either works. On dask the job travels to every worker once; with factories a worker
started anywhere rebuilds the teacher and the dataset from code installed there, and checks that it built the same
ones as the coordinator (fingerprints) before it writes a byte.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from kdcache.datasets.base import SampleDataset
from kdcache.datasets.items import as_sample_dataset
from kdcache.errors import ConfigError
from kdcache.registry import Factory
from kdcache.targets import Target
from kdcache.views import Views


@dataclass(frozen=True, kw_only=True)
class StageOneJob:
    """A teacher, a dataset, the views and the targets to cache, and how to run them (keyword-only: a reordered
    field cannot silently swap two arguments).

    * ``teacher``: an ``nn.Module`` or a :class:`Factory` that returns one (weights loaded);
    * ``dataset``: a :class:`SampleDataset` or a :class:`Factory` that returns one;
    * ``teacher_spec``: the JSON-able architecture description recorded in the teacher fingerprint (default: the
      factory's description, else the module's class name);
    * ``num_classes``: the class count recorded with the dataset; it must be the teacher's output width, and is
      read from the teacher when left out;
    * ``allow_tokenizer_mismatch``: cache a language-model teacher whose own tokenizer differs from the data's
      anyway, with a warning (:func:`kdcache.precompute.tokens.check_teacher_tokens`);
    * ``store_tokens``: also store a token dataset's packed ids, labels and lengths as sample arrays, so stage two
      can train from the store alone (:mod:`kdcache.datasets.packed`, :class:`kdcache.train.StoredTokens`).
    """

    teacher: nn.Module | Factory
    dataset: SampleDataset | Factory
    targets: tuple[Target, ...]
    views: Views
    num_classes: int | None = None
    teacher_name: str = "teacher"
    teacher_spec: dict[str, Any] | None = None
    batch_size: int = 256
    device: str = "cpu"
    ignore_index: int = -100
    allow_tokenizer_mismatch: bool = False
    store_tokens: bool = False

    def build_teacher(self) -> nn.Module:
        teacher = self.teacher.build() if isinstance(self.teacher, Factory) else self.teacher
        if not isinstance(teacher, nn.Module):
            raise ConfigError(
                f"the teacher must be a torch.nn.Module (or a factory returning one); got {type(teacher).__name__}"
                + (f" from factory {self.teacher.target!r}" if isinstance(self.teacher, Factory) else "")
            )
        return teacher

    def build_dataset(self) -> SampleDataset:
        """The dataset: a kdcache :class:`SampleDataset`, or any map-style torch dataset of ``(image, label)``
        items (wrapped in :class:`~kdcache.datasets.ItemDataset`), or what a factory returns."""
        return as_sample_dataset(self.dataset.build() if isinstance(self.dataset, Factory) else self.dataset)

    def spec(self, teacher: nn.Module) -> dict[str, Any]:
        """The architecture description recorded in the teacher's fingerprint."""
        if self.teacher_spec is not None:
            return self.teacher_spec
        if isinstance(self.teacher, Factory):
            return self.teacher.describe()
        return {"class": type(teacher).__name__}

    @property
    def torch_device(self) -> torch.device:
        return torch.device(self.device)
