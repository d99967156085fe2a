"""Float arrays in storage: float16, bfloat16 (as its raw 16 bits: Zarr v3 has no bfloat16 type) or float32, and
the base of every target that is one such array per sample (FSP matrices, feature maps, embeddings)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Literal

import numpy as np

from kdcache.names import Compressor
from kdcache.registry import LazyModule
from kdcache.targets.base import StoredArray, Target, TargetParams

if TYPE_CHECKING:
    import torch
else:
    torch = LazyModule("torch")

FloatDtype = Literal["float16", "bfloat16", "float32"]
LSE_GRID = 2.0**-40  # stored log-sum-exps are multiples of this (1e-12): finer than float32 wherever |lse| > 2^-17


def to_storage(value: torch.Tensor, dtype: FloatDtype) -> np.ndarray:
    """A float tensor as the numpy array that stores it (bfloat16 as its raw uint16 bits)."""
    if dtype == "bfloat16":
        return value.detach().to(torch.bfloat16).cpu().view(torch.uint16).numpy()
    return value.detach().to(getattr(torch, dtype)).cpu().numpy()


def wide(value: torch.Tensor) -> torch.Tensor:
    """``value`` in float64 on its own device (on the CPU for Apple's MPS, which has no float64): where every
    stored number that goes through exp or log is computed, so its float32 (or float16) rounding does not depend
    on the CPU's vectorised kernels (docs/store-format.md, "Where byte identity holds")."""
    return value.detach().cpu().double() if value.device.type == "mps" else value.detach().double()


def log_sum_exp_float32(value: torch.Tensor, temperatures: Sequence[float], dim: int) -> np.ndarray:
    """log Σ exp(value / T) along ``dim`` at every temperature T, stacked on a new last axis, as stored: computed in
    float64, rounded to a multiple of :data:`LSE_GRID` and then to float32.

    float64 keeps the exp/log kernels' and the summation order's error (~1e-16 relative to the summands) far below
    float32's rounding, so the bytes are the same whatever kernels the CPU (ATen's default, AVX2 or AVX-512 code) or
    GPU runs, but for a result within that error of a rounding boundary. The grid does the same for results near 0
    (log-probs at T = 1 sum to exactly 1), which would otherwise store that error itself."""
    wide_value = wide(value)
    # x / 1 is x exactly: T = 1 skips a pass over the values, with the same bytes
    lse = torch.stack([torch.logsumexp(wide_value / t if t != 1 else wide_value, dim=dim) for t in temperatures], -1)
    return (torch.round(lse / LSE_GRID) * LSE_GRID).cpu().numpy().astype(np.float32)


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
