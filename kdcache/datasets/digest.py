"""Content digests: what proves, sample by sample and view by view, that stage two joins the inputs the teacher saw.

Stage one records a digest of every sample's source content — the input exactly as the dataset returns it, before
any view transform, and its label — in the store (``samples/digest``), and one of every view's model input
(``samples/view_digest``, :mod:`kdcache.views.digest`). Stage two computes the same digests of everything it loads
and refuses a mismatch, so a reordered, filtered, edited or self-augmenting dataset cannot be paired with another
sample's targets.

Both digests are XXH3-128 (``xxhash``) of ``"<dtype><shape>|"`` and the array's C-order bytes (the sample digest
then the same for the label; ``numpy``'s ``dtype.str`` and shape tuple, e.g. ``|u1(3, 224, 224)|``): 16 bytes
each. XXH3 runs at ~17 GB/s on one core here, so 256 images of 224×224×3 uint8 take ~2 ms (format 2's BLAKE2b:
34 ms, a ceiling of ~7.6k samples/s). It guards against accidents — other data, another transform, another kernel —
not against an adversary crafting collisions. Inputs may be one stacked tensor or a list of tensors of different
sizes. :func:`blake2b_sample_digests` is format 2's digest, kept so ``kdcache upgrade`` can prove an old store's
dataset before recording the new digests.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence

import numpy as np
import torch
import xxhash

DIGEST_BYTES = 16
DIGEST_HASH = "xxh3-128"

Inputs = torch.Tensor | Sequence[torch.Tensor]
Rows = np.ndarray | Sequence[np.ndarray]


SMALL_ROW_BYTES = 64 * 1024  # rows up to this size are hashed from one byte matrix: one call per row


def content_digests(rows: Rows, heads: Sequence[bytes], labels: np.ndarray | None = None) -> np.ndarray:
    """``(B, 16)`` uint8: XXH3-128 of ``heads[i]`` + the bytes of ``rows[i]`` (+ the label header and the bytes of
    ``labels[i]``). ``rows`` is one stacked array (one header for all) or a list of arrays."""
    label_head = b"" if labels is None else f"{labels.dtype.str}{labels.shape[1:]}|".encode()
    if isinstance(rows, np.ndarray) and rows[:1].nbytes <= SMALL_ROW_BYTES:
        return _matrix_digests(rows, heads[0], labels, label_head)
    out = np.empty((len(rows), DIGEST_BYTES), dtype=np.uint8)
    for row, (head, array) in enumerate(zip(heads, rows, strict=True)):
        hasher = xxhash.xxh3_128(head)
        hasher.update(np.ascontiguousarray(array).data)
        if labels is not None:
            hasher.update(label_head)
            hasher.update(np.ascontiguousarray(labels[row]).data)
        out[row] = np.frombuffer(hasher.digest(), dtype=np.uint8)
    return out


def _matrix_digests(rows: np.ndarray, head: bytes, labels: np.ndarray | None, label_head: bytes) -> np.ndarray:
    """The digests of small stacked rows from one ``[head | row | label head | label]`` byte matrix, filled in
    place: the same digests as the row-by-row path, with one hash call per row and no Python per part."""
    count = len(rows)
    parts = [np.frombuffer(head, dtype=np.uint8), np.ascontiguousarray(rows).reshape(count, -1).view(np.uint8)]
    if labels is not None:
        parts += [
            np.frombuffer(label_head, dtype=np.uint8),
            np.ascontiguousarray(labels).reshape(count, -1).view(np.uint8),
        ]
    matrix = np.empty((count, sum(part.shape[-1] for part in parts)), dtype=np.uint8)
    start = 0
    for part in parts:
        matrix[:, start : start + part.shape[-1]] = part
        start += part.shape[-1]
    found = b"".join(map(xxhash.xxh3_128_digest, matrix))
    return np.frombuffer(found, dtype=np.uint8).reshape(count, DIGEST_BYTES).copy()


def sample_digests(inputs: Inputs, labels: torch.Tensor) -> np.ndarray:
    """``(B, 16)`` uint8: the digest of every sample of a batch (``inputs[i]``, ``labels[i]``)."""
    rows, heads = _rows(inputs)
    return content_digests(rows, heads, _labels(labels))


def blake2b_sample_digests(inputs: Inputs, labels: torch.Tensor) -> np.ndarray:
    """Format 2's per-sample digest (BLAKE2b-128 of the same bytes), for upgrading format-2 stores."""
    rows, heads = _rows(inputs)
    ys = _labels(labels)
    label_head = f"{ys.dtype.str}{ys.shape[1:]}|".encode()
    digest = hashlib.blake2b
    found = [
        digest(head + row.tobytes() + label_head + label.tobytes(), digest_size=DIGEST_BYTES).digest()
        for head, row, label in zip(heads, rows, ys.reshape(len(ys), -1), strict=True)
    ]
    return np.frombuffer(b"".join(found), dtype=np.uint8).reshape(len(found), DIGEST_BYTES).copy()


def _rows(inputs: Inputs) -> tuple[Rows, list[bytes]]:
    """Each sample's bytes (C order) and header: one stacked array and header for a stacked batch, one per sample
    for a list."""
    if not isinstance(inputs, torch.Tensor):  # a list of samples of different sizes
        rows = [x.detach().cpu().contiguous().numpy() for x in inputs]
        return rows, [f"{x.dtype.str}{x.shape}|".encode() for x in rows]
    stacked = inputs.detach().cpu().contiguous().numpy()
    return stacked, [f"{stacked.dtype.str}{stacked.shape[1:]}|".encode()] * len(stacked)


def _labels(labels: torch.Tensor) -> np.ndarray:
    return labels.detach().cpu().contiguous().numpy()
