"""A split of token sequences as a store can hold it: the packed input ids, the labels and the real-token counts.

Stage one writes these rows as optional sample arrays (``cache.store_tokens``), so stage two, dask workers and other
teams rebuild exactly the batches the teacher saw from the store alone, with neither the corpus nor a tokenizer run:

* ``samples/tokens`` ``(N, L)``: the input ids, in the narrowest unsigned dtype for the vocabulary (uint8 up to 256
  ids, uint16 up to 65,536, uint32 beyond); padded positions hold the pad id, as the dataset gives them;
* ``samples/labels`` ``(N, L)``: the labels as the dataset gives them, ``ignore_index`` (−100) where a position has
  none, in int16 when every id and the ignore index fit, else int32 (zstd: mostly a constant in chat data);
* ``samples/lengths`` ``(N,)`` int64: each sequence's real tokens (the attention mask is 1 before, 0 after).

They are written from the same ``get_batch`` rows the per-sample content digest (``samples/digest``) is made of, so
reading them back is checked against that digest like any other dataset's rows.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from kdcache.datasets.base import SampleDataset, Subset
from kdcache.datasets.tokenizer import TOKENIZED_KINDS
from kdcache.errors import ConfigError
from kdcache.names import Compressor

TOKENS, LABELS, LENGTHS = "samples/tokens", "samples/labels", "samples/lengths"
TOKEN_ARRAYS = (TOKENS, LABELS, LENGTHS)


def token_dtype(vocab_size: int) -> np.dtype:
    """The narrowest unsigned dtype that holds every id below ``vocab_size``."""
    for dtype in (np.uint8, np.uint16, np.uint32):
        if vocab_size <= np.iinfo(dtype).max + 1:
            return np.dtype(dtype)
    return np.dtype(np.uint64)


def label_dtype(vocab_size: int, ignore_index: int) -> np.dtype:
    """int16 when every id below ``vocab_size`` and ``ignore_index`` fit, else int32."""
    info = np.iinfo(np.int16)
    return np.dtype(np.int16 if vocab_size - 1 <= info.max and info.min <= ignore_index else np.int32)


def packing_facts(dataset: SampleDataset) -> tuple[int, int, int]:
    """``(seq_len, vocab_size, ignore_index)`` of a dataset of token sequences (or a subset of one), from its
    description; refuses any other dataset, naming it."""
    source = dataset.describe()
    if source.get("kind") not in TOKENIZED_KINDS or "tokenizer" not in source:
        raise ConfigError(
            f"store_tokens stores token sequences, but the dataset is {source.get('kind')!r} data "
            f"({type(dataset).__name__}); use it with a text or chat dataset only (cache.store_tokens: false)"
        )
    packing = source["packing"]
    return int(packing["seq_len"]), int(source["tokenizer"]["vocab_size"]), int(packing["ignore_index"])


def sequence_lengths(dataset: SampleDataset, indices: np.ndarray) -> np.ndarray:
    """Real-token counts ``(n,)`` int64 of samples ``indices`` of a token dataset or a :class:`Subset` of one."""
    indices = np.asarray(indices, dtype=np.int64)
    while isinstance(dataset, Subset):
        indices = dataset.indices[indices]
        dataset = dataset.base
    lengths = getattr(dataset, "lengths", None)
    if lengths is None:
        raise ConfigError(
            f"{type(dataset).__name__} has no sequence lengths; store_tokens needs a text or chat dataset"
        )
    return np.asarray(lengths, dtype=np.int64)[indices]


def token_rows(dataset: SampleDataset, lo: int, hi: int) -> dict[str, np.ndarray]:
    """The rows of ``samples/tokens``, ``samples/labels`` and ``samples/lengths`` for samples ``[lo, hi)``."""
    _, vocab, ignore = packing_facts(dataset)
    indices = np.arange(lo, hi, dtype=np.int64)
    batch, targets = dataset.get_batch(indices)
    inputs = (torch.stack(batch) if isinstance(batch, list) else batch).numpy()  # sequences of seq_len: stacked
    labels = targets.numpy()
    bad = (inputs < 0) | (inputs >= vocab)
    if bad.any():
        row, col = np.argwhere(bad)[0]
        raise ConfigError(
            f"sample {lo + row} holds token id {inputs[row, col]} at position {col}, outside the "
            f"vocabulary of {vocab} ids; it cannot be stored as samples/tokens"
        )
    return {
        TOKENS: inputs.astype(token_dtype(vocab)),
        LABELS: labels.astype(label_dtype(vocab, ignore)),
        LENGTHS: sequence_lengths(dataset, indices),
    }


def token_array_facts(dataset: SampleDataset) -> list[tuple[str, tuple[int, ...], str, Compressor, dict[str, Any]]]:
    """``(path, sample shape, dtype, compressor, attributes)`` of each token array for ``dataset``."""
    seq_len, vocab, ignore = packing_facts(dataset)
    tokens = f"input token ids of each sequence (vocabulary of {vocab}; padding holds the pad id)"
    labels = f"each position's label as the dataset gives it; {ignore} where it has none"
    return [
        (TOKENS, (seq_len,), token_dtype(vocab).name, "zstd", _described(TOKENS, ["sample", "position"], tokens)),
        (
            LABELS,
            (seq_len,),
            label_dtype(vocab, ignore).name,
            "zstd",
            _described(LABELS, ["sample", "position"], labels) | {"ignore_index": ignore},
        ),
        (LENGTHS, (), "int64", "none", _described(LENGTHS, ["sample"], "real tokens of each sequence (attention 1)")),
    ]


def _described(path: str, axes: list[str], meaning: str) -> dict[str, Any]:
    return {"array": path, "axes": axes, "meaning": meaning}
