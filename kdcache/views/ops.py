"""Replayable augmentation ops: parameters drawn from a keyed stream, pixels made by torchvision.transforms.v2.

An op splits a random transform in two, like torchvision's ``get_params`` + functional call: :meth:`ViewOp.draw`
turns a :class:`KeyedRandom` stream into a fixed-length tuple of numbers (stored in ``views/params``), and
:meth:`ViewOp.apply` makes the pixels from those numbers alone with ``torchvision.transforms.v2.functional``. Every
op keeps the image size, so the eval view (no op applied) and every augmented view have the same shape.

Ops are registered by name in ``VIEW_OPS`` with a pydantic ``Params`` model, so a pipeline's ``views.augment`` list is
validated like losses and targets: an unknown op or parameter is an error that lists the valid ones.
"""

from __future__ import annotations

import itertools
import math
from abc import ABC, abstractmethod
from collections.abc import Sequence
from typing import Any, ClassVar, Literal

import numpy as np
import torch
import torchvision.transforms.v2.functional as F
from pydantic import BaseModel, ConfigDict, Field, model_validator
from torchvision.transforms import InterpolationMode

from kdcache.registry import Registry
from kdcache.views.rng import KeyedRandom

Size = tuple[int, int]


class ViewOpParams(BaseModel):
    """Base of every op's parameters: unknown keys are errors; values are part of the view spec's digest."""

    model_config = ConfigDict(extra="forbid", frozen=True)


class ViewOp(ABC):
    """One replayable transform. Subclasses set ``name``, ``Params`` and ``values`` (names of the drawn numbers)."""

    name: ClassVar[str]
    Params: ClassVar[type[ViewOpParams]]
    values: ClassVar[tuple[str, ...]]
    #: uniforms one view's draw takes, when that number is fixed: the op then draws a whole batch at once
    #: (:meth:`draw_many`); ``None`` when it depends on the draws (a retry loop), and views are drawn one by one
    draws: ClassVar[int | None] = None

    def __init__(self, params: ViewOpParams) -> None:
        self.params = params

    def __repr__(self) -> str:
        return f"{self.name}({', '.join(f'{k}={v}' for k, v in self.params.model_dump().items())})"

    @abstractmethod
    def draw(self, rng: KeyedRandom, size: Size) -> tuple[float, ...]:
        """The op's numbers for one view of an image of ``size`` (height, width), one per name in ``values``."""

    def draw_many(self, uniforms: np.ndarray) -> np.ndarray:
        """``(B, len(values))`` float64: the numbers :meth:`draw` gives each row, from each row's first ``draws``
        uniforms ``(B, draws)`` (:func:`~kdcache.views.rng.uniforms_of`), bit for bit, without a loop over rows."""
        raise NotImplementedError(f"view op {self.name!r} draws a varying number of uniforms: draw it per view")

    @abstractmethod
    def identity(self, size: Size) -> tuple[float, ...]:
        """The numbers under which the op leaves an image unchanged (recorded for the eval view)."""

    @abstractmethod
    def apply(self, image: torch.Tensor, values: Sequence[float]) -> torch.Tensor:
        """The transformed ``(C, H, W)`` float image, from the drawn numbers only."""

    def describe(self) -> dict[str, Any]:
        return {"op": self.name, **self.params.model_dump(mode="json")}


VIEW_OPS: Registry[type[ViewOp]] = Registry("view op")


def build_view_op(name: str, params: dict[str, Any] | None = None) -> ViewOp:
    """An op of the registered ``name`` with validated ``params``, e.g. ``build_view_op("random_crop", {"padding": 1})``."""
    cls = VIEW_OPS.get(name)
    return cls(cls.Params.model_validate(params or {}))


def _interpolation(name: str) -> InterpolationMode:
    return InterpolationMode(name)


class ResizedCropParams(ViewOpParams):
    scale: tuple[float, float] = (0.08, 1.0)
    ratio: tuple[float, float] = (3 / 4, 4 / 3)
    interpolation: Literal["bilinear", "bicubic", "nearest"] = "bilinear"
    antialias: bool = True

    @model_validator(mode="after")
    def _ranges(self) -> ResizedCropParams:
        if not 0 < self.scale[0] <= self.scale[1] <= 1:
            raise ValueError(f"scale must satisfy 0 < min <= max <= 1, got {list(self.scale)}")
        if not 0 < self.ratio[0] <= self.ratio[1]:
            raise ValueError(f"ratio must satisfy 0 < min <= max, got {list(self.ratio)}")
        return self


@VIEW_OPS.register("random_resized_crop")
class RandomResizedCrop(ViewOp):
    """A box of random area (``scale``) and aspect (``ratio``), resized back to the image size (Szegedy et al. 2015;
    torchvision's ``RandomResizedCrop.get_params`` algorithm, 10 tries then a centre crop)."""

    name = "random_resized_crop"
    Params = ResizedCropParams
    values = ("top", "left", "height", "width")
    params: ResizedCropParams

    def draw(self, rng: KeyedRandom, size: Size) -> tuple[float, ...]:
        height, width = size
        area = height * width
        log_lo, log_hi = math.log(self.params.ratio[0]), math.log(self.params.ratio[1])
        for _ in range(10):
            target = area * rng.uniform(*self.params.scale)
            aspect = math.exp(rng.uniform(log_lo, log_hi))
            w = round(math.sqrt(target * aspect))
            h = round(math.sqrt(target / aspect))
            if 0 < w <= width and 0 < h <= height:
                return (rng.integer(0, height - h), rng.integer(0, width - w), h, w)
        in_ratio = width / height
        w, h = width, height
        if in_ratio < self.params.ratio[0]:
            h = round(w / self.params.ratio[0])
        elif in_ratio > self.params.ratio[1]:
            w = round(h * self.params.ratio[1])
        return ((height - h) // 2, (width - w) // 2, h, w)

    def identity(self, size: Size) -> tuple[float, ...]:
        return (0, 0, size[0], size[1])

    def apply(self, image: torch.Tensor, values: Sequence[float]) -> torch.Tensor:
        top, left, h, w = (int(v) for v in values)
        return F.resized_crop(
            image,
            top,
            left,
            h,
            w,
            list(image.shape[-2:]),
            interpolation=_interpolation(self.params.interpolation),
            antialias=self.params.antialias,
        )


class FlipParams(ViewOpParams):
    p: float = Field(default=0.5, ge=0, le=1)


@VIEW_OPS.register("horizontal_flip")
class HorizontalFlip(ViewOp):
    """Mirror left-right with probability ``p``."""

    name = "horizontal_flip"
    Params = FlipParams
    values = ("flip",)
    params: FlipParams

    draws = 1

    def draw(self, rng: KeyedRandom, size: Size) -> tuple[float, ...]:
        return (float(rng.uniform() < self.params.p),)

    def draw_many(self, uniforms: np.ndarray) -> np.ndarray:
        return (uniforms < self.params.p).astype(np.float64)

    def identity(self, size: Size) -> tuple[float, ...]:
        return (0.0,)

    def apply(self, image: torch.Tensor, values: Sequence[float]) -> torch.Tensor:
        return F.horizontal_flip(image) if values[0] else image


class CropParams(ViewOpParams):
    padding: int = Field(default=4, ge=1)
    fill: float = 0.0
    padding_mode: Literal["constant", "edge", "reflect", "symmetric"] = "constant"


@VIEW_OPS.register("random_crop")
class RandomCrop(ViewOp):
    """Pad by ``padding`` on every side, then crop the image size at a random offset (the CIFAR recipe:
    a random translation by up to ``padding`` pixels)."""

    name = "random_crop"
    Params = CropParams
    values = ("top", "left")
    params: CropParams

    draws = 2

    def draw(self, rng: KeyedRandom, size: Size) -> tuple[float, ...]:
        p = self.params.padding
        return (rng.integer(0, 2 * p), rng.integer(0, 2 * p))

    def draw_many(self, uniforms: np.ndarray) -> np.ndarray:
        return _integers(uniforms, 0, 2 * self.params.padding)

    def identity(self, size: Size) -> tuple[float, ...]:
        return (self.params.padding, self.params.padding)

    def apply(self, image: torch.Tensor, values: Sequence[float]) -> torch.Tensor:
        padded = F.pad(image, [self.params.padding], fill=self.params.fill, padding_mode=self.params.padding_mode)
        return F.crop(padded, int(values[0]), int(values[1]), image.shape[-2], image.shape[-1])


class JitterParams(ViewOpParams):
    brightness: float = Field(default=0.0, ge=0)
    contrast: float = Field(default=0.0, ge=0)
    saturation: float = Field(default=0.0, ge=0)
    hue: float = Field(default=0.0, ge=0, le=0.5)


_ORDERS = list(itertools.permutations(range(4)))  # the 24 orders of (brightness, contrast, saturation, hue)
_ADJUST = (F.adjust_brightness, F.adjust_contrast, F.adjust_saturation, F.adjust_hue)
_NEUTRAL = (1.0, 1.0, 1.0, 0.0)


@VIEW_OPS.register("color_jitter")
class ColorJitter(ViewOp):
    """Brightness, contrast, saturation and hue factors in torchvision's ``ColorJitter`` ranges, applied in a random
    order (saturation and hue leave single-channel images unchanged)."""

    name = "color_jitter"
    Params = JitterParams
    values = ("brightness", "contrast", "saturation", "hue", "order")
    params: JitterParams

    draws = 5

    def draw(self, rng: KeyedRandom, size: Size) -> tuple[float, ...]:
        p = self.params
        factors = [rng.uniform(max(0.0, 1 - s), 1 + s) for s in (p.brightness, p.contrast, p.saturation)]
        return (*factors, rng.uniform(-p.hue, p.hue), rng.integer(0, len(_ORDERS) - 1))

    def draw_many(self, uniforms: np.ndarray) -> np.ndarray:
        p = self.params
        ranges = [(max(0.0, 1 - s), 1 + s) for s in (p.brightness, p.contrast, p.saturation)] + [(-p.hue, p.hue)]
        columns = [low + (high - low) * uniforms[:, k] for k, (low, high) in enumerate(ranges)]
        return np.column_stack([*columns, _integers(uniforms[:, 4:], 0, len(_ORDERS) - 1)[:, 0]])

    def identity(self, size: Size) -> tuple[float, ...]:
        return (*_NEUTRAL, 0)

    def apply(self, image: torch.Tensor, values: Sequence[float]) -> torch.Tensor:
        for k in _ORDERS[int(values[4])]:
            if float(values[k]) != _NEUTRAL[k]:
                image = _ADJUST[k](image, float(values[k]))
        return image


def _integers(uniforms: np.ndarray, low: int, high: int) -> np.ndarray:
    """:meth:`KeyedRandom.integer` of every uniform, as float64: ``low + min(floor(u · (high - low + 1)), high - low)``
    (the uniform ``u`` comes out of ``uniform()`` unchanged, and ``int`` of a non-negative float is its floor)."""
    return low + np.minimum(np.floor(uniforms * (high - low + 1)), high - low)
