"""The view of token inputs: the token ids themselves, unchanged, for every (sample, view).

A language model's input for a sequence is its token ids; there is no normalisation and no augmentation that would
keep the cached per-token targets valid. :class:`TokenViews` implements :class:`~kdcache.views.Views`, the
interface of :class:`~kdcache.views.ViewTransform` that stage one, stage two and online KD use, so they take it
wherever they take image views, and it keeps inputs int64.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from kdcache.datasets.base import SampleDataset
from kdcache.errors import ConfigError
from kdcache.fingerprint import with_digest
from kdcache.views.protocol import Views
from kdcache.views.transform import Images, ViewBatch, ViewTransform

TOKEN_TRANSFORM = {"inputs": "token ids", "op": "identity"}


class TokenViews:
    """One view per sample: the token ids as the dataset gives them (int64).

    >>> views = TokenViews()
    >>> views(torch.tensor([[5, 7, 9]]), None, None)
    tensor([[5, 7, 9]])
    """

    count = 1
    seed = 0  # nothing is drawn: the spec records seed 0

    @property
    def param_names(self) -> list[str]:
        """No numbers are drawn for a view of token ids."""
        return []

    @property
    def seeded_code(self) -> bool:
        """No code with internal random numbers runs: token ids are never altered."""
        return False

    def __repr__(self) -> str:
        return "TokenViews()"

    def eval_view(self) -> TokenViews:
        """The same view: token inputs have no augmented views."""
        return self

    def spec(self) -> dict[str, Any]:
        """The JSON-able identity of these views, with a digest, as recorded in the store manifest."""
        return with_digest({"count": self.count, "seed": self.seed, "transform": dict(TOKEN_TRANSFORM)})

    def batch(self, dataset: SampleDataset, indices: np.ndarray, view_ids: np.ndarray) -> ViewBatch:
        """Read sequences ``indices``: their token ids are the inputs of every view; no numbers are drawn
        (``(B, 0)`` float32 params)."""
        raw, labels = dataset.get_batch(np.ascontiguousarray(indices, dtype=np.int64))
        return ViewBatch(token_ids(raw), raw, labels, np.zeros((len(view_ids), 0), dtype=np.float32))

    def __call__(self, inputs: Images, indices: np.ndarray | None, view_ids: np.ndarray | None) -> torch.Tensor:
        """The token ids, checked to be integers and returned as int64."""
        return token_ids(inputs)


def token_ids(inputs: Images) -> torch.Tensor:
    """``inputs`` as int64 token ids; float inputs (images) and lists of images are refused."""
    if not isinstance(inputs, torch.Tensor):
        raise ConfigError(
            f"token views take a (B, L) tensor of token ids, got a {type(inputs).__name__} of {len(inputs)} inputs: "
            "use a text dataset (kdcache.datasets.TextDataset) with token views, and image views for images"
        )
    if inputs.is_floating_point() or inputs.dtype == torch.bool:
        raise ConfigError(
            f"token views take integer token ids, got {inputs.dtype} inputs of shape {tuple(inputs.shape)}: use a "
            "text dataset (kdcache.datasets.TextDataset) with token views, and image views for images"
        )
    return inputs.long()


def views_from_spec(spec: dict[str, Any]) -> Views:
    """The views a store's manifest describes: :class:`TokenViews` for a token store, otherwise
    :meth:`ViewTransform.from_spec` (what stage two uses when no views are given)."""
    if spec.get("transform") == TOKEN_TRANSFORM:
        return TokenViews()
    return ViewTransform.from_spec(spec)
