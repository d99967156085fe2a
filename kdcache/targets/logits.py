"""Raw teacher logits (response-based knowledge, Hinton et al. 2015).

Logits are stored raw: temperature is a stage-two choice, so one store serves every temperature. ``dense`` keeps
every class in float16, bfloat16 (stored as its 16 raw bits, since Zarr v3 has no bfloat16 type) or float32.
"""

from __future__ import annotations

from typing import Literal

import numpy as np
import torch

from kdcache.targets.base import TARGETS, StoredArray, Target, TargetParams, TeacherOutputs

FloatDtype = Literal["float16", "bfloat16", "float32"]


class LogitsParams(TargetParams):
    encoding: Literal["dense"] = "dense"
    dtype: FloatDtype = "float16"


def to_storage(value: torch.Tensor, dtype: FloatDtype) -> np.ndarray:
    """A float tensor as the numpy array that stores it (bfloat16 as its raw uint16 bits)."""
    if dtype == "bfloat16":
        return value.detach().to(torch.bfloat16).cpu().view(torch.uint16).numpy()
    return value.detach().to(getattr(torch, dtype)).cpu().numpy()


def from_storage(array: torch.Tensor, dtype: FloatDtype) -> torch.Tensor:
    """Inverse of :func:`to_storage`, as float32 on the array's device."""
    if dtype == "bfloat16":
        return array.view(torch.bfloat16).float()
    return array.float()


def storage_dtype(dtype: FloatDtype) -> str:
    return "uint16" if dtype == "bfloat16" else dtype


@TARGETS.register("logits")
class LogitsTarget(Target):
    """The teacher's final outputs, ``(C,)`` per sample for classification or ``(C, H, W)`` for segmentation."""

    kind = "logits"
    Params = LogitsParams
    params: LogitsParams

    @property
    def name(self) -> str:
        return "logits"

    def extract(self, outputs: TeacherOutputs) -> torch.Tensor:
        return outputs.logits.float()

    def layout(self, sample_shape: tuple[int, ...]) -> dict[str, StoredArray]:
        return {"logits": StoredArray(sample_shape, storage_dtype(self.params.dtype))}

    def encode(self, value: torch.Tensor) -> dict[str, np.ndarray]:
        return {"logits": to_storage(value, self.params.dtype)}

    def decode(self, arrays: dict[str, torch.Tensor]) -> torch.Tensor:
        return from_storage(arrays["logits"], self.params.dtype)
