"""Float arrays in storage: float16, bfloat16 (as its raw 16 bits: Zarr v3 has no bfloat16 type) or float32, and
the base of every target that is one such array per sample (FSP matrices, feature maps, embeddings)."""

from __future__ import annotations

from typing import Literal

import numpy as np
import torch

from kdcache.names import Compressor
from kdcache.targets.base import StoredArray, Target, TargetParams

FloatDtype = Literal["float16", "bfloat16", "float32"]


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


class FloatArrayParams(TargetParams):
    """Storage of a one-array target: dtype and compressor (activations compress, so zstd by default)."""

    dtype: FloatDtype = "float16"
    compressor: Compressor = "zstd"


class FloatArrayTarget(Target):
    """A target stored as one float array per sample under its own name; subclasses say what to extract."""

    params: FloatArrayParams

    def layout(self, sample_shape: tuple[int, ...]) -> dict[str, StoredArray]:
        stored = StoredArray(
            sample_shape,
            storage_dtype(self.params.dtype),
            self.params.compressor,
            axes=self.axes(sample_shape),
            decodes_to=self.params.dtype,
            meaning=self.meaning(),
        )
        return {self.name: stored}

    def axes(self, sample_shape: tuple[int, ...]) -> tuple[str, ...]:
        """Names of the value's axes: a map's (channel, height, width), else feature dimensions."""
        return ("channel", "height", "width") if len(sample_shape) == 3 else ("feature",) * len(sample_shape)

    def meaning(self) -> str:
        return f"the teacher's {self.kind} {self.name}"

    def encode(self, value: torch.Tensor) -> dict[str, np.ndarray]:
        return {self.name: to_storage(value, self.params.dtype)}

    def decode(self, arrays: dict[str, torch.Tensor]) -> torch.Tensor:
        return from_storage(arrays[self.name], self.params.dtype)
