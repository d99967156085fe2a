"""Views: the exact model input for (sample i, view v), replayable anywhere from (seed, i, v) alone.

View 0 is the eval view: normalisation only, no augmentation op applied, whatever the ops are. A store with
``count = 1`` therefore caches the classic single clean view, a store with ``count = V`` caches that clean view plus
``V - 1`` augmented ones, and test-time evaluation (:meth:`ViewTransform.eval_view`) always sees view 0. Views
``v >= 1`` apply the augmentation ops in order, each with numbers drawn from the keyed stream of ``(seed, i, v)``
(:mod:`kdcache.views.rng`); the numbers are rounded to float32 before they are used, so what stage one stores in
``views/params`` is exactly what made the pixels.

The view spec (count, seed, ops with every parameter, the RNG, the names of the drawn numbers) is part of the store's
identity: stage two replays the same views, so cached targets and student inputs match bit for bit. How stage two
picks a view per epoch (the ``policy``) is not part of it: one store serves every policy.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from kdcache.errors import ConfigError
from kdcache.fingerprint import with_digest
from kdcache.views.ops import Size, ViewOp
from kdcache.views.rng import RNG_NAME, KeyedRandom, check_seed

EVAL_VIEW = 0


class ViewTransform:
    """Turns raw ``[0, 1]`` inputs of given (sample, view) pairs into model inputs: augmentation ops, then normalisation.

    >>> from kdcache.views import build_view_op
    >>> views = ViewTransform(count=8, seed=0, mean=(0.3,), std=(0.37,),
    ...                       augment=[build_view_op("random_crop", {"padding": 1})])
    >>> views.param_names
    ['0.random_crop.top', '0.random_crop.left']
    """

    def __init__(
        self,
        *,
        count: int,
        seed: int,
        mean: tuple[float, ...],
        std: tuple[float, ...],
        augment: Sequence[ViewOp] = (),
    ) -> None:
        if count < 1:
            raise ConfigError(f"a view transform needs count >= 1 views (view 0 is the eval view), got {count}")
        self.count = count
        self.seed = check_seed(seed)
        self.augment = tuple(augment)
        self.mean = torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1)
        self.std = torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1)

    def __repr__(self) -> str:
        return f"ViewTransform(count={self.count}, seed={self.seed}, augment={list(self.augment)})"

    @property
    def param_names(self) -> list[str]:
        """Names of the columns of ``views/params``: ``<position>.<op>.<value>``."""
        return [f"{k}.{op.name}.{value}" for k, op in enumerate(self.augment) for value in op.values]

    def eval_view(self) -> ViewTransform:
        """One view, no augmentation: what test-time evaluation sees (the same pixels as view 0 of this transform)."""
        return ViewTransform(
            count=1, seed=self.seed, mean=tuple(self.mean.flatten().tolist()), std=tuple(self.std.flatten().tolist())
        )

    def spec(self) -> dict[str, Any]:
        """The JSON-able identity of these views, with a digest, as recorded in the store manifest.

        Without augmentation ops the spec is exactly what kdcache 0.1 recorded, so existing stores keep matching.
        """
        transform: dict[str, Any] = {
            "normalize": {"mean": self.mean.flatten().tolist(), "std": self.std.flatten().tolist()}
        }
        if self.augment:
            transform.update(
                augment=[op.describe() for op in self.augment],
                rng=RNG_NAME,
                params=self.param_names,
                eval_view=EVAL_VIEW,
            )
        return with_digest({"count": self.count, "seed": self.seed, "transform": transform})

    def params(self, indices: np.ndarray, view_ids: np.ndarray, size: Size) -> np.ndarray:
        """The drawn numbers of each (sample, view) pair, ``(B, P)`` float32 (the eval view gets identity numbers)."""
        indices = np.asarray(indices, dtype=np.int64)
        view_ids = np.asarray(view_ids, dtype=np.int64)
        out = np.empty((len(indices), len(self.param_names)), dtype=np.float32)
        identity = [x for op in self.augment for x in op.identity(size)]
        for row, (i, v) in enumerate(zip(indices.tolist(), view_ids.tolist(), strict=True)):
            if v == EVAL_VIEW:
                out[row] = identity
                continue
            rng = KeyedRandom(self.seed, sample=i, view=v)
            out[row] = [x for op in self.augment for x in op.draw(rng, size)]
        return out

    def apply(self, inputs: torch.Tensor, params: np.ndarray, view_ids: np.ndarray) -> torch.Tensor:
        """Model inputs from raw ``(B, C, H, W)`` inputs and the numbers :meth:`params` drew for them."""
        if self.augment and (np.asarray(view_ids) != EVAL_VIEW).any():
            images = []
            for image, values, v in zip(inputs, params, np.asarray(view_ids).tolist(), strict=True):
                start = 0
                for op in self.augment if v != EVAL_VIEW else ():
                    image = op.apply(image, values[start : start + len(op.values)].tolist())
                    start += len(op.values)
                images.append(image)
            inputs = torch.stack(images)
        return (inputs - self.mean) / self.std

    def __call__(self, inputs: torch.Tensor, indices: np.ndarray | None, view_ids: np.ndarray | None) -> torch.Tensor:
        """Model inputs for raw inputs of samples ``indices`` under views ``view_ids``."""
        if not self.augment:
            return (inputs - self.mean) / self.std
        params = self.params(indices, view_ids, tuple(inputs.shape[-2:]))
        return self.apply(inputs, params, view_ids)
