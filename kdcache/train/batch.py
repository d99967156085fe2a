"""A training batch as stage two hands it to the loop: inputs, labels, sample indices and views, teacher targets.

Targets travel as their stored dtype (float16, int8, ...) through CPU memory (pinned when the device is CUDA) and
are decoded on the training device by :meth:`Batch.to`.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any

import torch

from kdcache.targets import EnsembleDecoder, Target


@dataclass
class Batch:
    """A training batch: model inputs, labels, the sample indices and views they came from, and teacher targets.

    ``params`` holds the numbers each view's augmentation was drawn with, ``(B, P)`` float32 (columns named by
    ``ViewTransform.param_names``; it stays on the CPU). ``targets`` holds stored arrays (by target, then array name)
    until :meth:`to` decodes them on the device.
    """

    inputs: torch.Tensor
    labels: torch.Tensor
    indices: torch.Tensor
    views: torch.Tensor
    targets: dict[str, Any] = field(default_factory=dict)
    decoders: dict[str, Target | EnsembleDecoder] = field(default_factory=dict, repr=False)
    params: torch.Tensor | None = None

    def pin_memory(self) -> Batch:
        """Called by DataLoader(pin_memory=True): page-lock every tensor so the copy to the GPU can overlap."""
        pinned = {name: {k: v.pin_memory() for k, v in arrays.items()} for name, arrays in self.targets.items()}
        return replace(self, inputs=self.inputs.pin_memory(), labels=self.labels.pin_memory(), targets=pinned)

    def to(self, device: torch.device | str) -> Batch:
        """Move to ``device`` (non-blocking from pinned memory) and decode every target there."""
        device = torch.device(device)
        decoded = {
            name: self.decoders[name].decode({k: v.to(device, non_blocking=True) for k, v in arrays.items()})
            for name, arrays in self.targets.items()
        }
        return replace(
            self,
            inputs=self.inputs.to(device, non_blocking=True),
            labels=self.labels.to(device, non_blocking=True),
            targets=decoded,
            decoders={},
        )
