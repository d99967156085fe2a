"""Raw teacher logits (response-based knowledge, Hinton et al. 2015) and their storage encodings.

Logits are stored raw: temperature is a stage-two choice, so one store serves every temperature. Encodings:

* ``dense``: every class in float16, bfloat16 (its 16 raw bits as uint16: Zarr v3 has no bfloat16 type) or float32.
* ``topk``: the k largest logits with their class indices, plus log-sum-exp(z/T) of the *full* logits at every
  declared temperature T, so the probability mass outside the top k is known exactly at those temperatures. The
  log-sum-exp is computed in float64 and rounded once to float32: its bytes do not depend on the CPU's kernels.
* ``int8``: per-row affine quantisation, ``z ≈ offset + scale · (q + 128)`` with ``scale = (max - min) / 255``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

import numpy as np
from pydantic import Field, model_validator

from kdcache.capture import ModelOutputs
from kdcache.errors import ConfigError
from kdcache.names import Compressor
from kdcache.registry import LazyModule
from kdcache.targets.base import TARGETS, StoredArray, Target, TargetParams, required
from kdcache.targets.floats import FloatDtype, from_storage, log_sum_exp_float32, storage_dtype, to_storage
from kdcache.targets.invariants import int8_problem, topk_problem

if TYPE_CHECKING:
    import torch
else:
    torch = LazyModule("torch")

INT8_MEANING = "logits quantised per row: logit = offset + scale * (q + 128)"
LSE_MEANING = (
    "log-sum-exp over all classes of logits/T at each declared temperature T (the stored top-k values and the "
    "float32 tail): p_c = exp(value_c / T - lse_T) for the k stored classes, tail mass = 1 - sum of those"
)


@dataclass
class TopKLogits:
    """Decoded top-k logits: ``values``/``indices`` ``(B, k)``, ``lse`` ``(B, len(temperatures))`` of the full logits."""

    values: torch.Tensor
    indices: torch.Tensor
    lse: torch.Tensor
    temperatures: tuple[float, ...]

    def lse_at(self, temperature: float) -> torch.Tensor:
        """log Σ_c exp(z_c / T) of the full logits, for a temperature the store declared."""
        for i, t in enumerate(self.temperatures):
            if abs(t - temperature) < 1e-9:
                return self.lse[:, i]
        raise ConfigError(
            f"the top-k logits were cached with log-sum-exp at temperatures {list(self.temperatures)}, not at "
            f"T={temperature}; the tail mass is unknown there. Use one of those temperatures in the KD loss, or "
            "add it to the target's temperatures and re-run precompute"
        )


class LogitsParams(TargetParams):
    encoding: Literal["dense", "topk", "int8"] = "dense"
    dtype: FloatDtype = Field("float16", description="dense values and top-k values")
    k: int | None = Field(None, gt=0, description="top-k: classes kept per sample")
    temperatures: tuple[float, ...] = Field((1.0,), description="top-k: temperatures at which the tail is exact")
    compressor: Compressor = Field("none", description="dense: inner-chunk codec (dense segmentation maps compress)")

    @model_validator(mode="after")
    def _consistent(self) -> LogitsParams:
        if self.encoding == "topk" and self.k is None:
            raise ValueError("encoding topk needs k (the number of classes kept per sample)")
        if self.encoding != "topk" and self.k is not None:
            raise ValueError(f"k applies to encoding topk only, not {self.encoding}")
        if self.encoding != "dense" and self.compressor != "none":
            raise ValueError(f"compressor applies to encoding dense only, not {self.encoding}")
        if any(t <= 0 for t in self.temperatures):
            raise ValueError(f"temperatures must be positive, got {list(self.temperatures)}")
        if len(set(self.temperatures)) != len(self.temperatures):
            raise ValueError(f"temperatures must be distinct, got {list(self.temperatures)}")
        return self

    @property
    def top_k(self) -> int:
        """``k`` of the topk encoding: the classes kept per sample."""
        return required(self.k, "k", self.encoding)


@TARGETS.register("logits")
class LogitsTarget(Target):
    """The teacher's final outputs, ``(C,)`` per sample for classification or ``(C, H, W)`` for segmentation."""

    kind = "logits"
    Params = LogitsParams
    params: LogitsParams

    @property
    def name(self) -> str:
        return "logits" if self.params.encoding == "dense" else f"logits_{self.params.encoding}"

    def extract(self, outputs: ModelOutputs) -> torch.Tensor:
        return outputs.logits.float()

    def value_dtype(self) -> str | None:
        return None if self.params.encoding == "int8" else self.params.dtype  # int8 rescales every row

    def describe(self) -> dict:
        described = super().describe()
        if self.params.compressor == "none":  # stores written before ``compressor`` existed keep matching
            del described["compressor"]
        return described

    def layout(self, sample_shape: tuple[int, ...]) -> dict[str, StoredArray]:
        p, name = self.params, self.name
        if p.encoding == "dense":
            axes = ("class", "height", "width")[: len(sample_shape)]
            raw = "raw logits (no temperature applied)"
            return {name: StoredArray(sample_shape, storage_dtype(p.dtype), p.compressor, axes, p.dtype, raw)}
        if len(sample_shape) != 1:
            raise ConfigError(f"encoding {p.encoding} is for per-sample class logits (C,), not shape {sample_shape}")
        classes = sample_shape[0]
        if p.encoding == "int8":
            return {
                f"{name}/q": StoredArray((classes,), "int8", axes=("class",), meaning=INT8_MEANING),
                f"{name}/scale": StoredArray((), "float32", meaning="scale of each row's int8 logits"),
                f"{name}/offset": StoredArray((), "float32", meaning="minimum logit of each row"),
            }
        if p.top_k > classes:
            raise ConfigError(f"top-k with k={p.top_k} but the teacher has only {classes} classes; use k <= {classes}")
        index = "int16" if classes <= np.iinfo(np.int16).max else "int32"
        return {
            f"{name}/values": StoredArray(
                (p.top_k,),
                storage_dtype(p.dtype),
                axes=("rank",),
                decodes_to=p.dtype,
                meaning="the k largest raw logits, largest first",
            ),
            f"{name}/indices": StoredArray((p.top_k,), index, axes=("rank",), meaning="class index of each value"),
            f"{name}/lse": StoredArray((len(p.temperatures),), "float32", axes=("temperature",), meaning=LSE_MEANING),
        }

    def encode(self, value: torch.Tensor) -> dict[str, np.ndarray]:
        p, name = self.params, self.name
        if p.encoding == "dense":
            return {name: to_storage(value, p.dtype)}
        if p.encoding == "int8":
            low, high = value.amin(dim=1), value.amax(dim=1)
            scale = ((high - low) / 255).clamp_min(torch.finfo(torch.float32).tiny)
            q = torch.round((value - low[:, None]) / scale[:, None]).clamp(0, 255) - 128
            return {
                f"{name}/q": q.to(torch.int8).cpu().numpy(),
                f"{name}/scale": scale.cpu().numpy(),
                f"{name}/offset": low.cpu().numpy(),
            }
        top = value.topk(p.top_k, dim=1)
        stored = to_storage(top.values, p.dtype)
        # the distribution a reader reconstructs: the stored (rounded) top-k values and the exact float32 tail, so
        # its probabilities sum to 1 and k = C is exactly dense KD on the stored values
        kept = from_storage(torch.from_numpy(stored), p.dtype).to(value.device)
        full = value.float().scatter(1, top.indices, kept)
        index_dtype = np.int16 if value.shape[1] <= np.iinfo(np.int16).max else np.int32
        return {
            f"{name}/values": stored,
            f"{name}/indices": top.indices.cpu().numpy().astype(index_dtype),
            f"{name}/lse": log_sum_exp_float32(full, p.temperatures, dim=1),
        }

    def checked_arrays(self) -> tuple[str, ...]:
        checked = {"topk": ("values", "lse"), "int8": ("scale", "offset")}.get(self.params.encoding, ())
        return tuple(f"{self.name}/{array}" for array in checked)

    def stored_problem(self, arrays: dict[str, np.ndarray], value_shape: tuple[int, ...]) -> str:
        """Top-k: the stored mass at every declared temperature is in [k/C, 1] and T·lse_T rises as it must; int8:
        scales positive and finite (:mod:`kdcache.targets.invariants`)."""
        p, name = self.params, self.name
        if p.encoding == "topk":
            values, lse = arrays[f"{name}/values"], arrays[f"{name}/lse"]
            return topk_problem(values, lse, p.temperatures, value_shape[0], p.dtype)
        if p.encoding == "int8":
            return int8_problem(arrays[f"{name}/scale"], arrays[f"{name}/offset"])
        return ""

    def decode(self, arrays: dict[str, torch.Tensor]) -> torch.Tensor | TopKLogits:
        p, name = self.params, self.name
        if p.encoding == "dense":
            return from_storage(arrays[name], p.dtype)
        if p.encoding == "int8":
            q = arrays[f"{name}/q"].float() + 128
            return arrays[f"{name}/offset"][:, None] + arrays[f"{name}/scale"][:, None] * q
        return TopKLogits(
            values=from_storage(arrays[f"{name}/values"], p.dtype),
            indices=arrays[f"{name}/indices"].long(),
            lse=arrays[f"{name}/lse"],
            temperatures=p.temperatures,
        )
