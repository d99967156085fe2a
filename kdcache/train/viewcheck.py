"""Every view stage two builds is the input the teacher was given: its digest must equal the one stage one stored.

The view spec says which steps make the views (by what they are, :mod:`kdcache.views.identity`); this check proves
the result, view by view, as each batch is made, in whatever process makes it (DataLoader workers, persistent or
not, and DDP ranks included). A step that replays differently — a random source kdcache does not seed, an edited
function, another torchvision, other CPU kernels — is refused with the (sample, view) pairs and the likely cause,
instead of training on another input's targets. It can be downgraded to a logged warning only explicitly
(``allow_sample_mismatch``).
"""

from __future__ import annotations

import logging
from typing import Any

import numpy as np
import torch

from kdcache.datasets.base import SampleDataset
from kdcache.errors import ViewMismatchError
from kdcache.store import VIEW_DIGEST, ArrayReader
from kdcache.views.digest import view_digests

log = logging.getLogger(__name__)


class ViewCheck:
    """Compares each built view's input digest with the digest stage one stored for its (row, view)."""

    def __init__(
        self,
        url: str,
        dataset: SampleDataset,
        views: Any,
        digests: ArrayReader,
        *,
        built_on: str | None,
        allow_mismatch: bool,
    ) -> None:
        self.url, self.dataset, self.views, self.digests = url, dataset, views, digests
        self.built_on = built_on
        self.allow_mismatch = allow_mismatch

    def __call__(self, indices: np.ndarray, view_ids: np.ndarray, rows: np.ndarray, inputs: torch.Tensor) -> None:
        found = view_digests(inputs)
        stored = self.digests.read_rows(rows, view_ids)
        bad = np.flatnonzero((found != stored).any(axis=1))
        if len(bad) == 0:
            return
        message = self.describe(indices[bad], view_ids[bad], found[bad])
        if not self.allow_mismatch:
            raise ViewMismatchError(message)
        log.warning("%s (training on, because allow_sample_mismatch is set)", message)

    def describe(self, indices: np.ndarray, view_ids: np.ndarray, found: np.ndarray) -> str:
        """Which (sample, view) inputs differ, and the likely cause."""
        pairs = list(zip(indices[:8].tolist(), view_ids[:8].tolist(), strict=True))
        more = f" and {len(indices) - 8} more" if len(indices) > 8 else ""
        head = (
            f"store {self.url!r}: the model input of (sample, view) {pairs}{more} differs from the input the teacher "
            f"was given (per-view digest in {VIEW_DIGEST}), so their cached targets belong to other inputs"
        )
        return f"{head}. Likely cause: {self._cause(indices[:4], view_ids[:4], found[:4])}"

    def _cause(self, indices: np.ndarray, view_ids: np.ndarray, found: np.ndarray) -> str:
        again = view_digests(self.views.batch(self.dataset, indices, view_ids).inputs)
        if (again != found).any():
            return (
                "a view step gives different pixels for the same (seed, sample, view) twice in this process: it "
                "draws from a random source kdcache does not seed (numpy.random.default_rng(), its own "
                "torch.Generator, random.SystemRandom, os.urandom, time). Make it draw from torch's global "
                "generator, as torchvision v2 transforms do, and rebuild the store"
            )
        now = torch.backends.cpu.get_cpu_capability()
        if self.built_on is not None and self.built_on != now:
            return (
                f"the store's views were made with torch's {self.built_on} CPU kernels and this process uses {now}; "
                "resampling ops (resize, affine, rotate) round differently across kernels. Set "
                f"ATEN_CPU_CAPABILITY={self.built_on.lower()} for training, or rebuild the store on this machine"
            )
        return (
            "the views replay differently from how stage one made them: a step that draws from a source kdcache "
            "does not seed and fired only then, a function or class whose code changed in a way its description "
            "does not show, or other library versions (`kdcache inspect` lists the store's). Check the store against "
            "the teacher (kdcache.tools.recompute.recompute_check in Python, `kdcache verify --recompute` for a "
            "pipeline), then train with the views and versions that built it, or rebuild it"
        )
