"""torchvision v2 transforms, and MixUp/CutMix, as replayable views.

A torchvision v2 pipeline draws its randomness from torch's global generator (and a few transforms from Python's
``random``). Run for view ``v`` of sample ``i`` under those generators seeded from ``(seed, i, v)`` alone — a Philox
block of its own, restored afterwards — it gives the same pixels in stage one and stage two, whatever the batch,
DataLoader worker, process or machine (with the same torch and torchvision versions, which the view spec records). A
transform that draws from a source the key does not control (``numpy.random.default_rng()``, ``os.urandom``, its own
``torch.Generator``) is detected by running the pipeline twice under the same key
(:func:`~kdcache.views.check_replayable`).

MixUp and CutMix (Zhang et al. 2018; Yun et al. 2019) mix view ``v`` of sample ``i`` with view ``v`` of a partner
sample; the partner, λ ~ Beta(α, α) and CutMix's box centre come from the key too, so the teacher's output on the
mixed image is cached and replayed exactly, and stage two mixes the labels to match.
"""

from __future__ import annotations

import difflib
import math
import random
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import torch
from torchvision.transforms import InterpolationMode, v2

from kdcache.errors import ConfigError
from kdcache.registry import import_callable, is_import_path
from kdcache.views.identity import describe_step
from kdcache.views.rng import check_seed

TRANSFORM_DOMAIN, MIX_DOMAIN = 1, 2  # Philox counter word 1: 0 is kdcache's own ops, 1 the pipelines, 2 the mixing
TRANSFORM_RNG = "torch, random and numpy seeded from philox4x64-10; key=seed; counter=(0, 1, view, sample)"
MIX_PARAMS = ("mix.partner", "mix.lambda", "mix.cx", "mix.cy")

Transform = Callable[[torch.Tensor], torch.Tensor]


def keyed_seed(seed: int, sample: int, view: int, domain: int) -> int:
    """A 64-bit seed for (sample, view) in one domain, from its own Philox counter block."""
    counter = np.array([0, domain, view, sample], dtype=np.uint64)
    return int(np.random.Philox(key=check_seed(seed), counter=counter).random_raw())


@contextmanager
def keyed_generators(seed64: int) -> Iterator[None]:
    """torch's CPU generator, Python's ``random`` and numpy's global generator seeded from ``seed64`` inside the
    block, and given back their state after it."""
    py_state, np_state = random.getstate(), np.random.get_state()
    with torch.random.fork_rng(devices=[]):
        # the CPU generator only: torch.manual_seed would also queue CUDA seeding, with a stack trace per call
        torch.default_generator.manual_seed(seed64)
        random.seed(seed64)
        np.random.seed(seed64 % 2**32)
        try:
            yield
        finally:
            random.setstate(py_state)
            np.random.set_state(np_state)


@contextmanager
def one_thread() -> Iterator[None]:
    """torch on one intra-op thread inside the block. The ops of one small image are fastest that way: a pool of
    threads spends more on waking up than on the work (a 28x28 RandomAffine: 0.8 ms on one thread, 15 ms on two on
    this 2-core machine under load). The pixels are the same bits either way (each output pixel is computed alone),
    and DataLoader workers run on one thread already."""
    threads = torch.get_num_threads()
    if threads == 1:
        yield
        return
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def run_keyed(transform: Transform, image: torch.Tensor, seed: int, sample: int, view: int) -> torch.Tensor:
    """``transform(image)`` for view ``view`` of sample ``sample``: the same pixels wherever it runs."""
    with keyed_generators(keyed_seed(seed, sample, view, TRANSFORM_DOMAIN)):
        return transform(image)


def build_transform(spec: list[dict[str, Any]] | str | None, args: dict[str, Any] | None = None) -> Transform | None:
    """A transform from a pipeline file: a list of ``{name: RandomResizedCrop, size: 28, ...}`` (torchvision v2
    classes, or import paths of your own) composed in order, or one import path called with ``args``."""
    if spec is None:
        return None
    if isinstance(spec, str):
        return _call(import_callable(spec, what="view pipeline"), args or {}, spec)
    if not spec:
        raise ConfigError(
            "a view pipeline is an empty list; give at least one step, or None for no pipeline (in a pipeline file: "
            "list a step under views.pipeline / views.eval, or leave the key out)"
        )
    steps = []
    for entry in spec:
        options = dict(entry)
        name = options.pop("name", None)
        if not isinstance(name, str):
            raise ConfigError(f"a view pipeline step needs a name (a torchvision v2 transform), got {entry}")
        steps.append(_call(_transform_class(name), _yaml_options(options), name))
    return v2.Compose(steps)


def check_transform_names(spec: list[dict[str, Any]] | str | None) -> None:
    """Refuse a pipeline file's unknown torchvision transform names before any data is read (import paths of the
    user's own transforms are checked when the pipeline is built)."""
    for entry in spec if isinstance(spec, list) else []:
        name = entry.get("name") if isinstance(entry, dict) else None
        if isinstance(name, str) and not is_import_path(name):
            _transform_class(name)


def _transform_class(name: str) -> Callable[..., Any]:
    if is_import_path(name):
        return import_callable(name, what="view transform")
    found = getattr(v2, name, None)
    if not isinstance(found, type):
        names = [n for n in dir(v2) if isinstance(getattr(v2, n), type) and not n.startswith("_")]
        close = difflib.get_close_matches(name, names, n=3)
        hint = f" Did you mean {', '.join(close)}?" if close else ""
        raise ConfigError(
            f"unknown view transform {name!r}: not a class of torchvision.transforms.v2.{hint} Or give an import "
            "path 'package.module:callable' to your own"
        )
    return found


def _yaml_options(options: dict[str, Any]) -> dict[str, Any]:
    """YAML spellings of torch objects: ``dtype: float32``, ``interpolation: bicubic``."""
    converted = dict(options)
    if isinstance(converted.get("dtype"), str):
        converted["dtype"] = getattr(torch, converted["dtype"])
    if isinstance(converted.get("interpolation"), str):
        converted["interpolation"] = InterpolationMode(converted["interpolation"].lower())
    return converted


def _call(factory: Callable[..., Any], options: dict[str, Any], name: str) -> Transform:
    try:
        made = factory(**options)
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"view transform {name!r} rejected its arguments {options}: {exc}") from None
    if not callable(made):
        raise ConfigError(f"view pipeline {name!r} gave a {type(made).__name__}, not a transform")
    return made


def describe_transform(transform: Transform) -> list[Any]:
    """The pipeline as recorded in the view spec: what each step is (:func:`describe_step`: class and every
    attribute, functions by code), never its ``repr``."""
    steps = transform.transforms if isinstance(transform, v2.Compose) else [transform]
    return [describe_step(step) for step in steps]


@dataclass(frozen=True)
class Mix:
    """MixUp or CutMix of a view with the same view of a partner sample, applied with probability ``p``."""

    kind: Literal["mixup", "cutmix"]
    alpha: float = 1.0
    p: float = 1.0

    def __post_init__(self) -> None:
        if self.kind not in ("mixup", "cutmix") or self.alpha <= 0 or not 0 <= self.p <= 1:
            raise ConfigError(f"mix needs kind mixup or cutmix, alpha > 0 and 0 <= p <= 1; got {self}")

    def describe(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "alpha": self.alpha,
            "p": self.p,
            "rng": "torch seeded like the pipelines, counter (0, 2, view, sample)",
        }

    def draw(self, seed: int, sample: int, view: int, num_samples: int) -> tuple[float, float, float, float]:
        """(partner, λ, box centre x, box centre y) of one view; partner -1 when the view is not mixed."""
        with keyed_generators(keyed_seed(seed, sample, view, MIX_DOMAIN)):
            if num_samples < 2 or float(torch.rand(())) >= self.p:
                return (-1.0, 1.0, 0.0, 0.0)
            partner = int(torch.randint(num_samples - 1, ()))
            lam = float(torch.distributions.Beta(self.alpha, self.alpha).sample())
            centre = (float(torch.rand(())), float(torch.rand(())))
        return (float(partner + (partner >= sample)), lam, *centre)

    def apply(self, image: torch.Tensor, partner: torch.Tensor, values: np.ndarray) -> tuple[torch.Tensor, float]:
        """The mixed ``(C, H, W)`` image and the weight of ``image``'s label (CutMix: the area it keeps)."""
        lam, cx, cy = float(values[1]), float(values[2]), float(values[3])
        if self.kind == "mixup":
            return lam * image + (1 - lam) * partner, lam
        height, width = image.shape[-2:]
        cut = math.sqrt(1.0 - lam)
        h, w = int(height * cut), int(width * cut)
        y0, x0 = int(cy * height), int(cx * width)
        top, bottom = max(y0 - h // 2, 0), min(y0 + h // 2, height)
        left, right = max(x0 - w // 2, 0), min(x0 + w // 2, width)
        mixed = image.clone()
        mixed[..., top:bottom, left:right] = partner[..., top:bottom, left:right]
        return mixed, 1.0 - (bottom - top) * (right - left) / (height * width)
