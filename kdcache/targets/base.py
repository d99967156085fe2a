"""The target contract: what stage one extracts from a teacher, how it is stored, how stage two decodes it.

A target kind is registered by name (``TARGETS``) with a pydantic ``Params`` model, so pipeline files are validated
against the kind they name. ``extract`` gives the exact float32 value a loss uses with a live teacher; ``encode``
turns it into the arrays that are stored; ``decode`` turns stored arrays back into what the loss consumes. Losses
therefore see the same kind of object from a cache and from a live teacher.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np
from pydantic import BaseModel, ConfigDict

from kdcache.capture import ModelOutputs
from kdcache.errors import ConfigError, NonFiniteTargetError, TargetOverflowError
from kdcache.names import Compressor
from kdcache.registry import LazyModule, Registry

if TYPE_CHECKING:
    import torch
else:
    torch = LazyModule("torch")

FLOAT_LIMITS = {"float16": 65504.0, "bfloat16": 3.3895e38, "float32": 3.4028e38}


def required(value: int | None, field: str, encoding: str) -> int:
    """``value`` of a params field that ``encoding`` needs (its params' validator refuses params without it, so
    this names the fix only for params built around the validator, e.g. with ``model_construct``)."""
    if value is None:
        raise ConfigError(f"encoding {encoding} needs {field}; set {field} in the target's params")
    return value


class TargetParams(BaseModel):
    """Base of every target kind's parameters: unknown keys are errors."""

    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)


@dataclass(frozen=True)
class StoredArray:
    """How one array of a target is stored: the shape and dtype of one (sample, view) entry, the compressor, and
    what a reader without kdcache needs to decode it: the names of its axes after (sample, view), the dtype its
    values decode to (``bfloat16`` for raw bfloat16 bits stored as ``uint16``) and one sentence of meaning."""

    sample_shape: tuple[int, ...]
    dtype: str
    compressor: Compressor = "none"
    axes: tuple[str, ...] = ()
    decodes_to: str | None = None
    meaning: str = ""

    def attributes(self) -> dict[str, Any]:
        """The array's self-description, written into its ``zarr.json`` (``attributes.kdcache``)."""
        axes = (
            self.axes
            if len(self.axes) == len(self.sample_shape)
            else tuple(f"dim{i}" for i in range(len(self.sample_shape)))
        )
        return {"axes": ["sample", "view", *axes], "dtype": self.decodes_to or self.dtype, "meaning": self.meaning}


class Target(ABC):
    """One kind of teacher knowledge. Subclasses set ``kind`` and ``Params`` and register with ``TARGETS``."""

    kind: ClassVar[str]
    Params: ClassVar[type[TargetParams]]

    def __init__(self, params: TargetParams) -> None:
        self.params = params

    @property
    @abstractmethod
    def name(self) -> str:
        """Unique name of this target within a teacher (and the stem of its array names)."""

    def teacher_layers(self) -> list[str]:
        """Module paths whose outputs ``extract`` needs captured."""
        return []

    @abstractmethod
    def extract(self, outputs: ModelOutputs) -> torch.Tensor:
        """The float32 target, ``(B, ...)``, exactly as a loss would use it from a live teacher."""

    @abstractmethod
    def layout(self, sample_shape: tuple[int, ...]) -> dict[str, StoredArray]:
        """Arrays that store a target whose per-sample shape is ``sample_shape``, by name relative to the teacher."""

    @abstractmethod
    def encode(self, value: torch.Tensor) -> dict[str, np.ndarray]:
        """Arrays to store for a batch of extracted values (already checked to be finite)."""

    def encode_at(
        self, value: torch.Tensor, samples: np.ndarray, views: np.ndarray, labels: torch.Tensor | None = None
    ) -> dict[str, np.ndarray]:
        """Arrays to store for the values of these (sample, view) pairs, in order: what stage one calls.

        Encodings that draw random numbers (sampled tokens) key them by pair, so the stored bytes do not depend on
        how stage one batched the samples (resume, dask); every other encoding is :meth:`encode`. ``labels`` are
        the pairs' labels, for encodings that store positions without a label differently (token targets with
        ``masked: skip``).
        """
        del samples, views, labels
        return self.encode(value)

    @abstractmethod
    def decode(self, arrays: dict[str, torch.Tensor]) -> Any:
        """What losses consume, from stored arrays already on the training device."""

    def checked_arrays(self) -> tuple[str, ...]:
        """The arrays :meth:`stored_problem` reads (none by default: no invariant ties the values to the params)."""
        return ()

    def stored_problem(self, arrays: dict[str, np.ndarray], value_shape: tuple[int, ...]) -> str:
        """How stored rows (by array name, as read) break an invariant of this target's parameters, or ``""``:
        checked before they are decoded, so parameters that lie about the values are refused (none by default)."""
        del arrays, value_shape
        return ""

    def value_dtype(self) -> str | None:
        """The float dtype values are stored in (checked for overflow), or None when the encoding cannot overflow."""
        return getattr(self.params, "dtype", None)

    def check(self, value: torch.Tensor, indices: np.ndarray) -> None:
        """Refuse a batch that is not finite or does not fit the storage dtype, naming the samples. One pass over the
        values serves both checks: each row's largest magnitude, NaN or infinite exactly when the row holds a NaN or
        an infinity (``amax`` propagates NaN)."""
        if value.numel() == 0:
            return
        peak = value.abs().reshape(len(value), -1).amax(dim=1)
        check_finite(self.name, peak, indices)
        dtype = self.value_dtype()
        if dtype is not None:
            check_fits(self.name, peak, dtype, indices)

    def describe(self) -> dict[str, Any]:
        return self.params.model_dump(mode="json")

    def stored_arrays(
        self, teacher: str, value_shape: tuple[int, ...]
    ) -> dict[str, tuple[StoredArray, dict[str, Any]]]:
        """Each array of :meth:`layout` with the attributes its ``zarr.json`` carries: the teacher, this target's
        name, kind and parameters, the array's name, axes, decoded dtype and meaning."""
        described = {"teacher": teacher, "target": self.name, "kind": self.kind, "params": self.describe()}
        return {rel: (a, {**described, "array": rel, **a.attributes()}) for rel, a in self.layout(value_shape).items()}


TARGETS: Registry[type[Target]] = Registry("target kind")


def check_finite(name: str, peak: torch.Tensor, indices: np.ndarray) -> None:
    """Refuse NaN/Inf teacher outputs, naming the sample indices, before anything of the batch is written; ``peak``:
    each row's largest magnitude (:meth:`Target.check`)."""
    bad = ~torch.isfinite(peak)
    if bool(bad.any()):
        where = np.asarray(indices)[bad.cpu().numpy()]
        raise NonFiniteTargetError(
            f"teacher produced NaN/Inf in target {name!r} for {len(where)} sample(s), indices {where[:20].tolist()}"
            f"{' …' if len(where) > 20 else ''}. Nothing of this batch was written; check the inputs of those samples "
            "and the teacher checkpoint"
        )


def check_fits(name: str, peak: torch.Tensor, dtype: str, indices: np.ndarray) -> None:
    """Refuse values that would overflow the storage dtype (float16 saturates at 65504); ``peak``: each row's
    largest magnitude, all finite."""
    limit = FLOAT_LIMITS.get(dtype)
    if limit is None:
        return
    over = peak > limit
    if bool(over.any()):
        where = np.asarray(indices)[over.cpu().numpy()]
        raise TargetOverflowError(
            f"target {name!r} reaches |x| = {float(peak.max()):.4g}, beyond {dtype}'s limit {limit:g}, for samples "
            f"{where[:20].tolist()}. Store it as bfloat16 or float32 (dtype: bfloat16) instead"
        )
