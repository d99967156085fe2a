"""Checks of a store against its manifest: array metadata, shard sizes, shard digests, and the full scrub.

A reader trusts only the manifest. Every array's ``zarr.json`` must be Zarr v3, use allow-listed codecs and match the
manifest's record; every committed shard file must have its recorded size (checked when a store is opened) and
SHA-256 (checked the first time a reader touches it). Anything else is a typed error naming the store, the array,
the shard, the samples it holds and the fix.
"""

from __future__ import annotations

import hashlib
from typing import Any

import numpy as np

from kdcache.errors import CorruptShardError, StoreFormatError
from kdcache.fingerprint import json_differences, json_text
from kdcache.store.bounded import ZARR_JSON_MAX_BYTES, load_json
from kdcache.store.layout import ALLOWED_CODECS, SAMPLES_OWNER, Owner, shard_key, shard_ranges
from kdcache.store.location import StoreLocation
from kdcache.store.manifest import ArrayRecord, FileDigest, Manifest, ShardCommit
from kdcache.store.records import record_problems


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


def check_digest(location: StoreLocation, path: str, index: int, start: int, stop: int, digest: FileDigest) -> bytes:
    """Read one committed shard file and compare its size and SHA-256 with its record; its verified bytes."""
    try:
        raw = location.read_bytes(digest.key, limit=digest.nbytes)
    except FileNotFoundError:
        raise corrupt_shard(location.url, path, index, start, stop, digest, None) from None
    except StoreFormatError:  # not a regular file, or more bytes than recorded: refused before it is read
        size = location.size(digest.key)
        raise corrupt_shard(
            location.url,
            path,
            index,
            start,
            stop,
            digest,
            size,
            ", not read (not a regular file or larger than recorded)",
        ) from None
    if len(raw) != digest.nbytes:
        raise corrupt_shard(location.url, path, index, start, stop, digest, len(raw))
    actual = hashlib.sha256(raw).hexdigest()
    if actual != digest.sha256:
        raise corrupt_shard(location.url, path, index, start, stop, digest, len(raw), f" with sha256 {actual[:12]}…")
    return raw


def check_shard_sizes(location: StoreLocation, manifest: Manifest) -> None:
    """Every committed shard file exists with its recorded size (one stat per file)."""
    for commit in manifest.all_commits():
        for path, digest in commit.files.items():
            size = location.size(digest.key)
            if size != digest.nbytes:
                raise corrupt_shard(location.url, path, commit.index, commit.start, commit.stop, digest, size)


def check_commits(url: str, manifest: Manifest, owners: dict[Owner, dict[str, ArrayRecord]]) -> None:
    """Every commit record is in its place: its owner's arrays, its shard's sample range, and for each array the
    file key of that array's shard ``index`` (a record naming another shard's file is corruption, not a shard)."""
    ranges = shard_ranges(manifest.num_samples, manifest.shard_samples)
    for owner, commits in _owner_commits(manifest).items():
        arrays = owners[owner]
        for commit in commits:
            problem = _commit_problem(commit, arrays, ranges)
            if problem:
                raise StoreFormatError(
                    f"store {url!r}: the manifest's commit record of {owner} shard {commit.index} {problem}. The "
                    "manifest was changed after it was written: restore it or rebuild the store"
                )


def _owner_commits(manifest: Manifest) -> dict[Owner, list[ShardCommit]]:
    owners = {SAMPLES_OWNER: manifest.samples.shards}
    return owners | {Owner.listed(name): t.shards for name, t in manifest.teachers.items()}


def _commit_problem(commit: ShardCommit, arrays: dict[str, ArrayRecord], ranges: list[tuple[int, int]]) -> str:
    if not 0 <= commit.index < len(ranges) or (commit.start, commit.stop) != ranges[commit.index]:
        return f"covers samples [{commit.start}, {commit.stop}), not the shard's range"
    if set(commit.files) != set(arrays):
        return f"lists arrays {sorted(commit.files)}, not the owner's {sorted(arrays)}"
    for path, digest in commit.files.items():
        expected = shard_key(path, commit.index, len(arrays[path].shape))
        if digest.key != expected:
            return f"names file {digest.key} for array {path}, whose shard {commit.index} is {expected}"
    return ""


def check_pinned_metadata(location: StoreLocation, manifest: Manifest) -> None:
    """Every ``zarr.json`` of the store is (as JSON) the document the manifest pinned when it was published; an edit
    is named by its file and field."""
    problems = metadata_problems(location, manifest)
    if problems:
        raise StoreFormatError(problems[0])


def metadata_problems(location: StoreLocation, manifest: Manifest) -> list[str]:
    """One line per ``zarr.json`` that differs from its pinned document (file, fields, consequence, fix)."""
    problems = []
    for key, expected in sorted(manifest.metadata.items()):
        try:
            found = read_document(location, key)
        except StoreFormatError as exc:
            problems.append(str(exc))
            continue
        if found != expected:
            fields = "; ".join(differences(expected, found)[:5])
            problems.append(
                f"store {location.url!r}: {key} was changed after the store was written ({fields}). zarr would "
                "read the array differently: restore the file or rebuild the store"
            )
    return problems


def differences(expected: Any, found: Any) -> list[str]:
    """The fields in which two JSON documents differ, as ``path: store has X, manifest pinned Y``."""
    return [
        f"{path}: store has {json_text(store)}, manifest pinned {json_text(pinned)}"
        for path, store, pinned in json_differences(found, expected)
    ]


def read_document(location: StoreLocation, key: str) -> Any:
    """A ``zarr.json`` document, read within :data:`ZARR_JSON_MAX_BYTES` and parsed with bounded nesting."""
    try:
        return load_json(location.read_bytes(key, limit=ZARR_JSON_MAX_BYTES), f"store {location.url!r}: {key}")
    except StoreFormatError:
        raise
    except (FileNotFoundError, ValueError) as exc:
        raise StoreFormatError(f"store {location.url!r}: {key} is missing or unreadable ({exc})") from None


def check_array_metadata(location: StoreLocation, record: ArrayRecord) -> None:
    """The array's zarr.json is Zarr v3, uses only allowed codecs and matches the manifest's record."""
    url = location.url
    meta = read_document(location, f"{record.path}/zarr.json")
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


def scrub_problems(
    location: StoreLocation, manifest: Manifest, owners: dict[Owner, dict[str, ArrayRecord]]
) -> list[str]:
    """Every problem of a store, one line each: every pinned ``zarr.json``, every record's binding to what it
    names, every commit record's place, every array's layout, shard counts of complete owners, and the size and
    SHA-256 of every committed shard file. Unlike opening a store it does not stop at the first one."""
    problems = metadata_problems(location, manifest) + record_problems(location.url, manifest)
    for check in [
        lambda: check_commits(location.url, manifest, owners),
        *(lambda r=r: check_array_metadata(location, r) for rs in owners.values() for r in rs.values()),
    ]:
        try:
            check()
        except StoreFormatError as exc:
            problems.append(str(exc))
    status = {SAMPLES_OWNER: manifest.samples.status} | {
        Owner.listed(n): t.status for n, t in manifest.teachers.items()
    }
    for owner, commits in _owner_commits(manifest).items():
        if status[owner] == "complete" and [c.index for c in commits] != list(range(manifest.num_shards())):
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
