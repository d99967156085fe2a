"""Where a training step's teacher targets come from: the batch (cached KD) or a live teacher (online KD).

Both give the losses the same kind of values: the live teacher computes them with the same
:class:`~kdcache.targets.TargetExtractor` that stage one used to fill the store.
"""

from __future__ import annotations

from typing import Any, Protocol

import torch
from torch import nn

from kdcache.checkpoint import state_digest
from kdcache.fingerprint import canonical_digest
from kdcache.targets import Target, TargetExtractor
from kdcache.train.batch import Batch


class TargetSource(Protocol):
    def __call__(self, batch: Batch) -> dict[str, Any]: ...


def batch_targets(batch: Batch) -> dict[str, Any]:
    """Targets that came with the batch from the store (already decoded on the device)."""
    return batch.targets


class LiveTeacher:
    """The online-KD target source: runs the frozen teacher on each batch (the teacher lives on the device)."""

    def __init__(self, teacher: nn.Module, targets: list[Target], device: torch.device | str) -> None:
        self.extract = TargetExtractor(teacher, targets, device)

    @property
    def teacher(self) -> nn.Module:
        return self.extract.model

    def resume_record(self) -> dict[str, Any]:
        """What a resumed online-KD run must find unchanged (:mod:`kdcache.train.pinning`): a digest of the teacher's
        weights and of the targets it computes."""
        found = [[t.kind, t.name, t.params.model_dump(mode="json")] for t in self.extract.targets]
        return {"live_teacher": canonical_digest({"state": state_digest(self.teacher.state_dict()), "targets": found})}

    def __call__(self, batch: Batch) -> dict[str, Any]:
        _, values = self.extract(batch.inputs)
        return values
