"""Limits on what kdcache reads from a store: a store's files come from other teams and may be damaged or planted.

Every JSON file of a store is read with a size limit stated here (far above what real stores write) and parsed with
a bounded nesting depth, so a huge, endless or deeply nested file is a :class:`StoreFormatError` naming the file and
the limit within a second, instead of a hang, a ``MemoryError`` or a ``RecursionError``.

What real files weigh (measured on the stores the tests build): a ``zarr.json`` is 0.5-1 KB; a manifest is about
10 KB plus 0.6 KB per shard per owner (samples and each teacher), so 1.28M samples in shards of 256 with three
teachers is about 12 MB; a commit record is 0.3 KB per array; the lock is 0.2 KB.
"""

from __future__ import annotations

import json
from typing import Any

from kdcache.errors import StoreFormatError

ZARR_JSON_MAX_BYTES = 1 << 20  # 1 MiB per zarr.json document
MANIFEST_MAX_BYTES = 64 << 20  # the ceiling, checked before the manifest is read: 5x the ImageNet-scale manifest
MANIFEST_BASE_BYTES = 4 << 20  # pinned metadata, fingerprints, section digests
MANIFEST_BYTES_PER_RECORD = 16 << 10  # per shard per owner: 25x what a commit record of a few arrays weighs
MAX_COMMIT_RECORDS = 1 << 18  # commit records (and shards) per manifest, counted before it is parsed: 13x ImageNet's
COMMIT_MAX_BYTES = 1 << 20  # one shard's commit record
LOCK_MAX_BYTES = 64 << 10
MAX_JSON_DEPTH = 64  # kdcache's own documents nest less than 12 levels


def load_json(raw: bytes | str, where: str) -> Any:
    """Parse JSON read from ``where``; nesting deeper than :data:`MAX_JSON_DEPTH` is a :class:`StoreFormatError`."""
    try:
        data = json.loads(raw)
    except RecursionError:
        raise _too_deep(where) from None
    if _depth(data) > MAX_JSON_DEPTH:
        raise _too_deep(where)
    return data


def commit_records(raw: bytes | str) -> int:
    """How many commit records a manifest's JSON holds, counted on the bytes (each has one ``"owner"`` key) so a
    manifest of a million records is refused before a million objects are built."""
    if isinstance(raw, bytes):
        return raw.count(b'"owner"')
    return raw.count('"owner"')


def manifest_limit(num_shards: int, owners: int) -> int:
    """The most bytes a manifest of ``owners`` owners (samples and teachers) of ``num_shards`` shards may weigh."""
    return min(MANIFEST_MAX_BYTES, MANIFEST_BASE_BYTES + MANIFEST_BYTES_PER_RECORD * num_shards * owners)


def _depth(data: Any) -> int:
    """Nesting depth of a parsed JSON value, without recursion (the parser already bounded it by the stack)."""
    deepest, stack = 0, [(data, 1)]
    while stack:
        value, level = stack.pop()
        if isinstance(value, dict | list):
            deepest = max(deepest, level)
            if level <= MAX_JSON_DEPTH:
                stack.extend((v, level + 1) for v in (value.values() if isinstance(value, dict) else value))
    return deepest


def _too_deep(where: str) -> StoreFormatError:
    return StoreFormatError(
        f"{where} nests JSON deeper than {MAX_JSON_DEPTH} levels, the most kdcache reads (its own files nest less "
        "than 12): the file is damaged or was planted. Restore it from a copy of the store or rebuild the store"
    )
