"""Checks of a store against its manifest: array metadata, shard sizes, shard digests, and the full scrub.

A reader trusts only the manifest. Every array's ``zarr.json`` must be Zarr v3, use allow-listed codecs and match the
manifest's record; every committed shard file must have its recorded size (checked when a store is opened) and
SHA-256 (checked the first time a reader touches it). Anything else is a typed error naming the store, the array,
the shard, the samples it holds and the fix.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

import numpy as np

from kdcache.errors import CorruptShardError, StoreFormatError
from kdcache.store.layout import ALLOWED_CODECS
from kdcache.store.location import StoreLocation
from kdcache.store.manifest import ArrayRecord, FileDigest, Manifest


def corrupt_shard(
    url: str, path: str, index: int, start: int, stop: int, digest: FileDigest, size: int | None, why: str = ""
) -> CorruptShardError:
    """The error for a committed shard whose file is missing or differs from its record."""
    found = "missing" if size is None else f"{size} bytes"
    return CorruptShardError(
        f"store {url!r}, array {path}, shard {index} (samples {start}..{stop - 1}, file {digest.key}): "
        f"expected {digest.nbytes} bytes with sha256 {digest.sha256[:12]}…, found {found}{why}. "
        "Run `kdcache verify` to list every damaged shard, then restore them or rebuild with `kdcache precompute`"
    )


def check_digest(location: StoreLocation, path: str, index: int, start: int, stop: int, digest: FileDigest) -> None:
    """Read one committed shard file and compare its size and SHA-256 with its record."""
    try:
        raw = location.read_bytes(digest.key)
    except FileNotFoundError:
        raise corrupt_shard(location.url, path, index, start, stop, digest, None) from None
    if len(raw) != digest.nbytes:
        raise corrupt_shard(location.url, path, index, start, stop, digest, len(raw))
    actual = hashlib.sha256(raw).hexdigest()
    if actual != digest.sha256:
        raise corrupt_shard(location.url, path, index, start, stop, digest, len(raw), f" with sha256 {actual[:12]}…")


def check_shard_sizes(location: StoreLocation, manifest: Manifest) -> None:
    """Every committed shard file exists with its recorded size (one stat per file)."""
    for commit in manifest.all_commits():
        for path, digest in commit.files.items():
            size = location.size(digest.key)
            if size != digest.nbytes:
                raise corrupt_shard(location.url, path, commit.index, commit.start, commit.stop, digest, size)


def check_array_metadata(location: StoreLocation, record: ArrayRecord) -> None:
    """The array's zarr.json is Zarr v3, uses only allowed codecs and matches the manifest's record."""
    url = location.url
    try:
        meta = json.loads(location.read_bytes(f"{record.path}/zarr.json"))
    except (FileNotFoundError, ValueError) as exc:
        raise StoreFormatError(f"store {url!r}: metadata of {record.path} is missing or unreadable ({exc})") from None
    if not isinstance(meta, dict):
        raise StoreFormatError(f"store {url!r}: metadata of {record.path} is not a JSON object")
    if meta.get("zarr_format") != 3 or meta.get("node_type") != "array":
        raise StoreFormatError(f"store {url!r}: {record.path} is not a Zarr v3 array; only v3 stores are read")
    codecs = codec_names(meta.get("codecs", []))
    if not codecs <= ALLOWED_CODECS:
        raise StoreFormatError(
            f"store {url!r}: {record.path} uses codecs {sorted(codecs - ALLOWED_CODECS)} outside kdcache's "
            f"allow-list {sorted(ALLOWED_CODECS)}; refusing to decode it"
        )
    found = _layout_of(meta)
    expected = (record.shape, record.dtype, record.shards, record.chunks, _fill_of(record.dtype))
    if found != expected:
        raise StoreFormatError(
            f"store {url!r}: {record.path} has (shape, dtype, shard, chunk, fill) {found}; the manifest "
            f"says {expected}. The array's zarr.json was changed after the store was written: restore it or "
            "rebuild the store"
        )


def scrub_problems(location: StoreLocation, manifest: Manifest, owners: dict[str, dict[str, ArrayRecord]]) -> list[str]:
    """Every problem of a store, one line each: metadata of every array, shard counts of complete owners, and the
    size and SHA-256 of every committed shard file. Unlike opening a store it does not stop at the first one."""
    problems = []
    for records in owners.values():
        for record in records.values():
            try:
                check_array_metadata(location, record)
            except StoreFormatError as exc:
                problems.append(str(exc))
    expected = list(range(manifest.num_shards()))
    status = {"samples": (manifest.samples.status, manifest.samples.shards)}
    status |= {f"teachers/{n}": (t.status, t.shards) for n, t in manifest.teachers.items()}
    for owner, (state, commits) in status.items():
        if state == "complete" and [c.index for c in commits] != expected:
            problems.append(
                f"store {location.url!r}: {owner} is marked complete but its manifest lists shards "
                f"{[c.index for c in commits]} of {manifest.num_shards()}"
            )
    for commit in manifest.all_commits():
        for path, digest in commit.files.items():
            try:
                check_digest(location, path, commit.index, commit.start, commit.stop, digest)
            except CorruptShardError as exc:
                problems.append(str(exc))
    return problems


def _layout_of(meta: dict[str, Any]) -> tuple[Any, ...]:
    """(shape, dtype, shard shape, inner chunk shape, fill value) as an array's zarr.json states them."""
    grid = meta.get("chunk_grid")
    shard = grid.get("configuration", {}).get("chunk_shape") if isinstance(grid, dict) else None
    codecs = meta.get("codecs") or [{}]
    first = codecs[0] if isinstance(codecs[0], dict) else {}
    chunks = first.get("configuration", {}).get("chunk_shape") if first.get("name") == "sharding_indexed" else None
    return meta.get("shape"), meta.get("data_type"), shard, chunks, meta.get("fill_value")


def _fill_of(dtype: str) -> Any:
    """The fill value kdcache gives an array: NaN (as zarr.json spells it) for floats, 0 otherwise."""
    return "NaN" if np.issubdtype(np.dtype(dtype), np.floating) else 0


def codec_names(codecs: Any) -> set[str]:
    """Names of every codec in a codec list, nested sharding pipelines included; malformed entries count as ``?``."""
    if not isinstance(codecs, list):
        return {"?"}
    names: set[str] = set()
    for codec in codecs:
        if not isinstance(codec, dict) or not isinstance(codec.get("configuration", {}), dict):
            names.add("?")
            continue
        names.add(str(codec.get("name", "?")))
        config = codec.get("configuration", {})
        names |= codec_names(config.get("codecs", [])) | codec_names(config.get("index_codecs", []))
    return names
