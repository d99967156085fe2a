"""View steps of a user's own, importable by the CLI's and DDP's processes (``tests.faults.viewsteps:...``)."""

from __future__ import annotations

import os

import numpy as np
import torch

FACTOR_VARIABLE = "KDCACHE_TEST_VIEW_FACTOR"


class Darken:
    """A plain callable object with no ``__repr__`` (its default repr holds its memory address)."""

    def __init__(self, factor: float = 0.5) -> None:
        self.factor = factor

    def __call__(self, image: torch.Tensor) -> torch.Tensor:
        return image * self.factor


class Gamma:
    """A pipeline file's own transform, as ``{name: tests.faults.viewsteps:Gamma, gamma: 0.5}``."""

    def __init__(self, gamma: float = 1.0) -> None:
        self.gamma = gamma

    def __call__(self, image: torch.Tensor) -> torch.Tensor:
        return image.clamp(min=0) ** self.gamma


def env_scaled(image: torch.Tensor) -> torch.Tensor:
    """Reads its factor from the environment: a change no description of the code can show."""
    return image * float(os.environ.get(FACTOR_VARIABLE, "0.5"))


class Rare:
    """Adds noise with probability ``p`` from a generator of its own, which kdcache does not seed."""

    def __init__(self, p: float) -> None:
        self.p = p
        self.generator = np.random.default_rng()

    def __call__(self, image: torch.Tensor) -> torch.Tensor:
        if self.generator.random() < self.p:
            return image + 0.25
        return image


def env_scaled_step() -> object:
    """:func:`env_scaled` as a pipeline file's step (a step name is called to make the transform)."""
    return env_scaled
