"""Per-sample content digests: what proves, sample by sample, that stage two joins the inputs the teacher saw.

Stage one records a digest of every sample's source content — the input exactly as the dataset returns it, before
any view transform, and its label — in the store (``samples/digest``). Stage two computes the same digest of every
sample it loads and refuses a sample whose digest differs, so a reordered, filtered, edited or self-augmenting
dataset cannot be paired with another sample's targets. BLAKE2b-128 (hashlib) over the dtype, shape and bytes of
the input and of the label: 16 bytes a sample, and a cost far below a training step's (``kdcache bench``).
"""

from __future__ import annotations

import hashlib

import numpy as np
import torch

DIGEST_BYTES = 16


def sample_digest(inputs: torch.Tensor, label: torch.Tensor) -> bytes:
    """The content digest of one sample: its input (before views) and its label, dtypes and shapes included."""
    h = hashlib.blake2b(digest_size=DIGEST_BYTES)
    for part in (inputs, label):
        array = np.ascontiguousarray(part.detach().cpu().numpy())
        h.update(f"{array.dtype.str}{array.shape}|".encode())
        h.update(array.tobytes())
    return h.digest()


def sample_digests(inputs: torch.Tensor, labels: torch.Tensor) -> np.ndarray:
    """``(B, 16)`` uint8: the digest of every sample of a batch (``inputs[i]``, ``labels[i]``)."""
    rows = [sample_digest(x, y) for x, y in zip(inputs, labels, strict=True)]
    return np.frombuffer(b"".join(rows), dtype=np.uint8).reshape(len(rows), DIGEST_BYTES).copy()
