"""Stage two's token sequences read from the store itself: no corpus, no tokenizer, no re-tokenization.

A store built with ``store_tokens`` (:mod:`kdcache.datasets.packed`) holds each sequence's input ids, labels and
real-token count. :class:`StoredTokens` is a dataset of those rows: its description is the one the store recorded
for the original dataset, so its fingerprint is the original's and every refusal of stage two still applies
(another tokenizer, packing or vocabulary; another store). Every read is of committed shards, each checked against
its SHA-256 on first touch and every inner chunk against its crc32c, and every batch stage two loads is checked
against ``samples/digest`` like any dataset's (:mod:`kdcache.train.samplecheck`), so a row that differs from what
the teacher was given is refused, not trained on.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from kdcache.datasets.packed import LABELS, LENGTHS, TOKENS
from kdcache.datasets.text import TokenSequences
from kdcache.errors import StoreMismatchError
from kdcache.store import SAMPLES_OWNER, StoreReader


class StoredTokens(TokenSequences):
    """The token sequences a store was built from, read from its ``samples/tokens``, ``samples/labels`` and
    ``samples/lengths``: inputs and labels ``(B, L)`` int64 exactly as the original dataset gave them, and its
    ``attention_mask``. The arrays are held in memory when they fit ``ram_budget_bytes``, else streamed by chunk.

    >>> train = StoredTokens(open_store(url))  # doctest: +SKIP
    >>> inputs, labels = train.get_batch(np.arange(4))
    """

    def __init__(self, cache: StoreReader, *, ram_budget_bytes: float = 2 * 1024**3) -> None:
        arrays = cache.manifest.samples.arrays
        if missing := [p for p in (TOKENS, LABELS, LENGTHS) if p not in arrays]:
            raise StoreMismatchError(
                f"store {cache.url!r} holds no {', '.join(missing)}: it was built without store_tokens, so its "
                "sequences are not in it. Train from the dataset it was built from, or rebuild the store with "
                "precompute(..., store_tokens=True) (cache.store_tokens: true in a pipeline)"
            )
        self.url = cache.url
        self._source = dict(cache.manifest.dataset["source"])
        self.class_names = cache.manifest.dataset.get("class_names")
        self.split = str(self._source.get("split", "train"))
        packing = self._source["packing"]
        self.seq_len, self.ignore_index = int(packing["seq_len"]), int(packing["ignore_index"])
        self._check_rows(cache)
        fits = sum(_nbytes(arrays[p].shape, arrays[p].dtype) for p in (TOKENS, LABELS)) <= ram_budget_bytes
        self.tokens = cache.array_reader(arrays[TOKENS], SAMPLES_OWNER, in_memory=fits)
        self.stored_labels = cache.array_reader(arrays[LABELS], SAMPLES_OWNER, in_memory=fits)
        self.lengths = cache.array_reader(arrays[LENGTHS], SAMPLES_OWNER, in_memory=True).read_all()

    @staticmethod
    def _check_rows(cache: StoreReader) -> None:
        """Row ``r`` must hold sample ``r`` of the whole dataset: the rows are then the dataset, in order."""
        length = int(cache.manifest.dataset["length"])
        if not np.array_equal(cache.sample_index(), np.arange(length)):
            raise StoreMismatchError(
                f"store {cache.url!r} holds {cache.num_samples} of the dataset's {length} samples (or another order), "
                "so its stored sequences are not the dataset. Rebuild it over the whole split with store_tokens"
            )

    @property
    def vocab_size(self) -> int:
        """Token ids the store's tokenizer produces (recorded in the store; the tokenizer itself is not needed)."""
        return int(self._source["tokenizer"]["vocab_size"])

    def get_batch(self, indices: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        rows = np.asarray(indices, dtype=np.int64)
        inputs = self.tokens.read_rows(rows).astype(np.int64)
        labels = self.stored_labels.read_rows(rows).astype(np.int64)
        return torch.from_numpy(inputs), torch.from_numpy(labels)

    def all_labels(self) -> np.ndarray:
        """Every sequence's labels ``(N, L)`` int64 (shard by shard: a streamed reader keeps no copy)."""
        reader = self.stored_labels
        if reader.in_memory:
            return reader.read_all().astype(np.int64)
        return np.concatenate([reader.read_shard(i) for i in range(reader.num_shards)]).astype(np.int64)

    def describe(self) -> dict[str, Any]:
        return dict(self._source)


def _nbytes(shape: list[int] | tuple[int, ...], dtype: str) -> int:
    return int(np.prod(shape, dtype=np.int64)) * np.dtype(dtype).itemsize
