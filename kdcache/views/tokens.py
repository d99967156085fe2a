"""The view of token inputs: the token ids themselves, unchanged, for every (sample, view).

A language model's input for a sequence is its token ids; there is no normalisation and no augmentation that would
keep the cached per-token targets valid. :class:`TokenViews` has the interface of
:class:`~kdcache.views.ViewTransform` (``count``, ``seed``, ``augment``, ``spec()``, ``param_names``, ``params()``,
``apply()``, ``batch()``, ``__call__``, ``eval_view()``), so stage one, stage two and online KD take it wherever they take image
views, and it keeps inputs int64.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from kdcache.datasets.base import SampleDataset
from kdcache.errors import ConfigError
from kdcache.fingerprint import with_digest
from kdcache.views.transform import ViewBatch, ViewTransform

TOKEN_TRANSFORM = {"inputs": "token ids", "op": "identity"}


class TokenViews:
    """One view per sample: the token ids as the dataset gives them (int64).

    >>> views = TokenViews()
    >>> views(torch.tensor([[5, 7, 9]]), None, None)
    tensor([[5, 7, 9]])
    """

    count = 1
    seed = 0  # nothing is drawn; kept so code that reads ``views.seed`` works, and recorded as 0
    augment: tuple[Any, ...] = ()
    pipeline = None  # no torchvision pipeline, eval pipeline or mixing: token ids are never altered
    eval = None
    mix = None
    seeded_code = False
    param_names: list[str] = []

    def __repr__(self) -> str:
        return "TokenViews()"

    def eval_view(self) -> TokenViews:
        """The same view: token inputs have no augmented views."""
        return self

    def spec(self) -> dict[str, Any]:
        """The JSON-able identity of these views, with a digest, as recorded in the store manifest."""
        return with_digest({"count": self.count, "seed": self.seed, "transform": dict(TOKEN_TRANSFORM)})

    def params(
        self, indices: np.ndarray, view_ids: np.ndarray, sizes: Any = None, num_samples: int | None = None
    ) -> np.ndarray:
        """No numbers are drawn: ``(B, 0)`` float32."""
        del view_ids, sizes, num_samples
        return np.zeros((len(np.asarray(indices)), 0), dtype=np.float32)

    def batch(self, dataset: SampleDataset, indices: np.ndarray, view_ids: np.ndarray) -> ViewBatch:
        """Read sequences ``indices``: their token ids are the inputs of every view."""
        raw, labels = dataset.get_batch(np.ascontiguousarray(indices, dtype=np.int64))
        return ViewBatch(token_ids(raw), raw, labels, self.params(indices, view_ids))

    def apply(self, inputs: torch.Tensor, params: np.ndarray, view_ids: np.ndarray) -> torch.Tensor:
        """The token ids, checked to be integers and returned as int64."""
        del params, view_ids
        return token_ids(inputs)

    def __call__(self, inputs: torch.Tensor, indices: np.ndarray | None, view_ids: np.ndarray | None) -> torch.Tensor:
        return token_ids(inputs)


def token_ids(inputs: torch.Tensor) -> torch.Tensor:
    """``inputs`` as int64 token ids; float inputs (images) are refused."""
    if inputs.is_floating_point() or inputs.dtype == torch.bool:
        raise ConfigError(
            f"token views take integer token ids, got {inputs.dtype} inputs of shape {tuple(inputs.shape)}: use a "
            "text dataset (kdcache.datasets.TextDataset) with token views, and image views for images"
        )
    return inputs.long()


def views_from_spec(spec: dict[str, Any]) -> ViewTransform | TokenViews:
    """The views a store's manifest describes: :class:`TokenViews` for a token store, otherwise
    :meth:`ViewTransform.from_spec` (what stage two uses when no views are given)."""
    if spec.get("transform") == TOKEN_TRANSFORM:
        return TokenViews()
    return ViewTransform.from_spec(spec)
