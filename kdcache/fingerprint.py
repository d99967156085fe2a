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
import re
from collections.abc import Iterator
from typing import Any


def canonical_digest(facts: dict[str, Any]) -> str:
    """SHA-256 of the canonical (sorted, compact) JSON of ``facts``."""
    return hashlib.sha256(json.dumps(facts, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


def with_digest(facts: dict[str, Any]) -> dict[str, Any]:
    """``facts`` plus their ``digest``."""
    return {**facts, "digest": canonical_digest(facts)}


def describe_difference(now: dict[str, Any], store: dict[str, Any], *, shown: int = 1) -> str:
    """The first ``shown`` paths at which two fingerprints or specs differ, with both values, and how many more do.

    ``transform.pipeline[1].magnitude: store 9, now 5 (and 2 more differences)``: ``now`` is what the run states,
    ``store`` what the store recorded. Nested dicts and lists are walked to their leaves (:func:`json_differences`),
    so a difference deep inside a long spec is named instead of printing both specs; the top-level ``digest`` is
    left out (it differs whenever anything else does).
    """
    diffs = list(json_differences(_without_digest(store), _without_digest(now)))
    if not diffs:
        return "digests differ"
    text = "; ".join(f"{path}: store {json_text(a)}, now {json_text(b)}" for path, a, b in diffs[:shown])
    more = len(diffs) - shown
    return text if more <= 0 else f"{text} (and {more} more difference{'s' if more > 1 else ''})"


ABSENT = object()
"""The value :func:`json_differences` reports for a key or list entry one side does not have."""


def json_differences(store: Any, now: Any, path: str = "") -> Iterator[tuple[str, Any, Any]]:
    """Every leaf at which two JSON values differ, as ``(path, store's value, now's value)`` in document order.

    Paths read like the access that reaches the value (``transform.pipeline[1].magnitude``); a key or list entry
    only one side has is reported once, with :data:`ABSENT` on the other side.
    """
    if isinstance(store, dict) and isinstance(now, dict):
        for key in [*store, *(k for k in now if k not in store)]:
            child = f"{path}.{key}" if path else str(key)
            yield from json_differences(store.get(key, ABSENT), now.get(key, ABSENT), child)
    elif isinstance(store, list) and isinstance(now, list):
        for i in range(max(len(store), len(now))):
            a = store[i] if i < len(store) else ABSENT
            b = now[i] if i < len(now) else ABSENT
            yield from json_differences(a, b, f"{path}[{i}]")
    elif type(store) is not type(now) or store != now:  # 1 and True are equal in Python, not in a spec
        yield path or "(value)", store, now


def named_along(value: Any, path: str, keys: tuple[str, ...] = ("class", "function")) -> list[str]:
    """The names (the values of ``keys``) of the objects a :func:`json_differences` path passes through, outermost
    first: ``["torchvision.transforms.v2._misc:Lambda", "__main__:<lambda>"]`` for a lambda's changed constant."""
    names: list[str] = []
    for token in re.findall(r"\[(\d+)\]|([^.\[\]]+)", path):
        if isinstance(value, dict):
            names += [str(value[k]) for k in keys if isinstance(value.get(k), str)]
        index, key = token
        if index and isinstance(value, list) and int(index) < len(value):
            value = value[int(index)]
        elif key and isinstance(value, dict) and key in value:
            value = value[key]
        else:
            break
    return names


def _without_digest(facts: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in facts.items() if k != "digest"}


def json_text(value: Any, limit: int = 120) -> str:
    """``value`` as compact JSON (``absent`` for :data:`ABSENT`), cut at ``limit`` characters."""
    if value is ABSENT:
        return "absent"
    text = json.dumps(value, sort_keys=True, default=repr)
    return text if len(text) <= limit else text[: limit - 1] + "…"
