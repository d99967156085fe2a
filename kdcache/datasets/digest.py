"""Per-sample content digests: what proves, sample by sample, that stage two joins the inputs the teacher saw.

Stage one records a digest of every sample's source content — the input exactly as the dataset returns it, before
any view transform, and its label — in the store (``samples/digest``). Stage two computes the same digest of every
sample it loads and refuses a sample whose digest differs, so a reordered, filtered, edited or self-augmenting
dataset cannot be paired with another sample's targets.

The digest is BLAKE2b-128 (hashlib) of ``"<dtype><shape>|"`` and the bytes of the input, then the same for the label
(``numpy``'s ``dtype.str`` and shape tuple, e.g. ``<f4(1, 8, 8)|``): 16 bytes a sample. Inputs may be one stacked
tensor or a list of tensors of different sizes.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence

import numpy as np
import torch

DIGEST_BYTES = 16


def _header(array: np.ndarray) -> bytes:
    return f"{array.dtype.str}{array.shape}|".encode()


def sample_digests(inputs: torch.Tensor | Sequence[torch.Tensor], labels: torch.Tensor) -> np.ndarray:
    """``(B, 16)`` uint8: the digest of every sample of a batch (``inputs[i]``, ``labels[i]``)."""
    ys = labels.detach().cpu().contiguous().numpy()
    label_rows = ys.reshape(len(ys), -1)
    label_header = f"{ys.dtype.str}{ys.shape[1:]}|".encode()
    if isinstance(inputs, list | tuple):  # samples of different sizes
        rows = [x.detach().cpu().contiguous().numpy() for x in inputs]
        heads = [_header(x) for x in rows]
    else:  # one stacked tensor: one conversion, one header
        stacked = inputs.detach().cpu().contiguous().numpy()
        rows = list(stacked.reshape(len(stacked), -1))
        heads = [f"{stacked.dtype.str}{stacked.shape[1:]}|".encode()] * len(rows)
    digest = hashlib.blake2b
    found = [
        digest(head + row.tobytes() + label_header + label.tobytes(), digest_size=DIGEST_BYTES).digest()
        for head, row, label in zip(heads, rows, label_rows, strict=True)
    ]
    return np.frombuffer(b"".join(found), dtype=np.uint8).reshape(len(found), DIGEST_BYTES).copy()
