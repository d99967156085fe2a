"""Every sample stage two loads is the sample stage one cached: its content digest must equal the store's.

The dataset fingerprint (length, labels, 16 probe samples) refuses the wrong dataset before training starts; this
check then proves the join sample by sample, as each batch is loaded, in whatever process loads it (DataLoader
workers and DDP ranks included). A mismatch names the store, the sample and the likely cause. It can be downgraded
to a logged warning only explicitly (``allow_sample_mismatch``).
"""

from __future__ import annotations

import logging

import numpy as np
import torch

from kdcache.datasets.base import SampleDataset
from kdcache.datasets.digest import Inputs, sample_digests
from kdcache.errors import SampleMismatchError
from kdcache.store import ArrayReader

log = logging.getLogger(__name__)
REREAD = 16  # mismatched samples read again to tell a dataset that randomises from one that differs


class SampleCheck:
    """Compares each loaded sample's digest with the digest stage one stored for its row."""

    def __init__(self, url: str, dataset: SampleDataset, digests: ArrayReader, *, allow_mismatch: bool) -> None:
        self.url = url
        self.dataset = dataset
        self.digests = digests
        self.allow_mismatch = allow_mismatch
        if allow_mismatch:
            log.warning(
                "store %s: per-sample content checks only warn (allow_sample_mismatch is set): samples whose content "
                "differs from what the teacher saw will be trained on with another sample's targets",
                url,
            )

    def __call__(self, indices: np.ndarray, rows: np.ndarray, inputs: Inputs, labels: torch.Tensor) -> None:
        found = sample_digests(inputs, labels)
        stored = self.digests.read_rows(rows)
        bad = np.flatnonzero((found != stored).any(axis=1))
        if len(bad) == 0:
            return
        message = self.describe(indices[bad], found[bad])
        if not self.allow_mismatch:
            raise SampleMismatchError(message)
        log.warning("%s (training on, because allow_sample_mismatch is set)", message)

    def describe(self, indices: np.ndarray, found: np.ndarray) -> str:
        """What differs and the likely cause: a non-deterministic dataset, another order, or other content."""
        first = int(indices[0])
        listed = ", ".join(map(str, indices[:10].tolist())) + (" …" if len(indices) > 10 else "")
        head = (
            f"store {self.url!r}: the content of sample(s) {listed} differs from what stage one cached for them "
            f"(per-sample digest in samples/digest), so their cached targets belong to other inputs"
        )
        if (varying := self._varying(indices[:REREAD], found[:REREAD])) is not None:
            cause = (
                f"the dataset returned different content for sample {varying} on two reads: it augments or "
                "randomises inside __getitem__. Move augmentation into kdcache's views (replayed exactly from the "
                "store) and give the dataset deterministic items"
            )
        elif (row := self._row_of(found[0])) is not None:
            cause = (
                f"sample {first} of this dataset is row {row} of the store: the dataset is in another order "
                "(shuffled, re-sorted or filtered differently). Use the order the store was built with"
            )
        else:
            cause = (
                "no row of the store has this content: the files differ, or a transform inside the dataset (flip, "
                "resize, colour change) changed the samples. Train on the data the store was built from, or rebuild "
                "the store with `kdcache precompute`"
            )
        return f"{head}. Likely cause: {cause}"

    def _varying(self, indices: np.ndarray, found: np.ndarray) -> int | None:
        """A sample whose content changes from read to read (read twice more), or None."""
        for _ in range(2):
            again = sample_digests(*self.dataset.get_batch(indices))
            changed = np.flatnonzero((again != found).any(axis=1))
            if len(changed):
                return int(indices[changed[0]])
        return None

    def _row_of(self, digest: np.ndarray) -> int | None:
        every = self.digests.read_all()
        match = np.flatnonzero((every == digest).all(axis=1))
        return int(match[0]) if len(match) else None
