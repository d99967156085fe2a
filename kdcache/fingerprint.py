"""Fingerprints that tie a store to the dataset, views and teacher it was made from.

A fingerprint is a small JSON-able dict of named facts plus ``digest``, the SHA-256 of the canonical JSON of the
facts. Comparing digests is the check; comparing the facts says *what* differs, which is what an error message needs.
The facts themselves are gathered where the objects live (:mod:`kdcache.datasets.fingerprint`,
:mod:`kdcache.models.fingerprint`, :meth:`kdcache.views.ViewTransform.spec`); this module only digests and compares
them, so the store can check fingerprints without importing torch.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any


def canonical_digest(facts: dict[str, Any]) -> str:
    """SHA-256 of the canonical (sorted, compact) JSON of ``facts``."""
    return hashlib.sha256(json.dumps(facts, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


def with_digest(facts: dict[str, Any]) -> dict[str, Any]:
    """``facts`` plus their ``digest``."""
    return {**facts, "digest": canonical_digest(facts)}


def describe_difference(expected: dict[str, Any], found: dict[str, Any]) -> str:
    """Human-readable list of the facts that differ between two fingerprints (``digest`` left out)."""
    keys = sorted((set(expected) | set(found)) - {"digest"})
    diffs = [
        f"{k}: store has {found.get(k)!r}, expected {expected.get(k)!r}"
        for k in keys
        if expected.get(k) != found.get(k)
    ]
    return "; ".join(diffs) if diffs else "digests differ"
