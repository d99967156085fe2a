"""Fingerprints that tie a store to the dataset, views and teacher it was made from.

A fingerprint is a small JSON-able dict of named facts plus ``digest``, the SHA-256 of the canonical JSON of the
facts. Comparing digests is the check; comparing the facts says *what* differs, which is what an error message needs.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from typing import Any

import numpy as np
import torch
from torch import nn

from kdcache.datasets.base import SampleDataset

CONTENT_PROBES = 16  # samples hashed for the content fingerprint: evenly spaced, always including the first and last


def canonical_digest(facts: dict[str, Any]) -> str:
    """SHA-256 of the canonical (sorted, compact) JSON of ``facts``."""
    return hashlib.sha256(json.dumps(facts, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


def with_digest(facts: dict[str, Any]) -> dict[str, Any]:
    return {**facts, "digest": canonical_digest(facts)}


def dataset_fingerprint(dataset: SampleDataset, *, num_classes: int) -> dict[str, Any]:
    """Length, source, ordered labels and a content hash of probe samples: enough to tell two datasets apart."""
    n = len(dataset)
    probes = np.unique(np.linspace(0, n - 1, num=min(CONTENT_PROBES, n)).round().astype(np.int64))
    inputs, _ = dataset.get_batch(probes)
    labels = np.ascontiguousarray(dataset.all_labels(), dtype=np.int64)
    return with_digest(
        {
            "source": dataset.describe(),
            "length": n,
            "num_classes": num_classes,
            "labels_sha256": hashlib.sha256(labels.tobytes()).hexdigest(),
            "content_sha256": hashlib.sha256(inputs.contiguous().float().numpy().tobytes()).hexdigest(),
        }
    )


def state_digest(state: Mapping[str, torch.Tensor]) -> str:
    """SHA-256 over every tensor of a state dict: name, dtype, shape and bytes, in name order.

    Computable from a checkpoint file without building the model, so stage two can check which weights made a store.
    """
    h = hashlib.sha256()
    for name, tensor in sorted(state.items()):
        t = tensor.detach().cpu().contiguous()
        h.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def teacher_fingerprint(model: nn.Module, *, spec: dict[str, Any], layers: list[str]) -> dict[str, Any]:
    """Architecture spec, a hash of every state-dict tensor (name, dtype, shape, bytes), captured layers, mode."""
    dtypes = sorted({str(p.dtype) for p in model.parameters()})
    state = state_digest(model.state_dict())
    return with_digest({"spec": spec, "state_sha256": state, "layers": sorted(layers), "dtypes": dtypes, "eval": True})


def describe_difference(expected: dict[str, Any], found: dict[str, Any]) -> str:
    """Human-readable list of the facts that differ between two fingerprints (``digest`` left out)."""
    keys = sorted((set(expected) | set(found)) - {"digest"})
    diffs = [
        f"{k}: store has {found.get(k)!r}, expected {expected.get(k)!r}"
        for k in keys
        if expected.get(k) != found.get(k)
    ]
    return "; ".join(diffs) if diffs else "digests differ"
