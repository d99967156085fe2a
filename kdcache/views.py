"""Views: the exact input a model sees for (sample i, view v).

View 0 under the eval transform is the deterministic default. The view spec (count, seed, transform) is part of the
store's identity: stage two replays the same views, so cached targets and student inputs always match.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from kdcache.fingerprint import with_digest


class ViewTransform:
    """Turns raw ``[0, 1]`` inputs of given (sample, view) pairs into model inputs (normalised)."""

    def __init__(self, *, count: int, seed: int, mean: tuple[float, ...], std: tuple[float, ...]) -> None:
        self.count = count
        self.seed = seed
        self.mean = torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1)
        self.std = torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1)

    def spec(self) -> dict[str, Any]:
        """The JSON-able identity of these views, with a digest, as recorded in the store manifest."""
        return with_digest(
            {
                "count": self.count,
                "seed": self.seed,
                "transform": {"normalize": {"mean": self.mean.flatten().tolist(), "std": self.std.flatten().tolist()}},
            }
        )

    def __call__(self, inputs: torch.Tensor, indices: np.ndarray, views: np.ndarray) -> torch.Tensor:
        return (inputs - self.mean) / self.std
