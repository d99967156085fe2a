"""Opening a store for reading: the manifest, validated against the files, and readers for its arrays.

Only what the manifest lists is read. Opening checks every array's metadata and every committed shard file's size
(:mod:`kdcache.store.integrity`); array readers (:mod:`kdcache.store.arrays`) check each shard's SHA-256 the first
time they touch it, and zarr's crc32c codec checks each inner chunk again on decode. Whether the store fits a run —
its dataset, views, teachers, targets and classes — is one call, :meth:`StoreReader.require`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import zarr

from kdcache.errors import CorruptShardError, StoreFormatError
from kdcache.store.arrays import ArrayReader, open_zarr_array
from kdcache.store.integrity import (
    check_array_metadata,
    check_commits,
    check_digest,
    check_pinned_metadata,
    check_shard_sizes,
    scrub_problems,
)
from kdcache.store.layout import SAMPLES_OWNER
from kdcache.store.location import StoreLocation, io_errors
from kdcache.store.manifest import ArrayRecord, Manifest, ShardCommit, TeacherRecord, read_manifest
from kdcache.store.records import record_problems
from kdcache.store.requirements import Requirements, check, teacher_record
from kdcache.store.shardcache import DEFAULT_SHARD_CACHE_BYTES, ShardCache


class StoreReader:
    """An opened, validated store. Use :func:`open_store`."""

    def __init__(self, location: StoreLocation, manifest: Manifest, shard_cache: ShardCache | None = None) -> None:
        self.location = location
        self.manifest = manifest
        self.shard_cache = shard_cache  # streamed and loaded shards go through it (see open_store)

    def __repr__(self) -> str:
        return f"StoreReader({self.location.url!r}, {self.manifest.num_samples} samples, teachers={self.teachers})"

    @property
    def url(self) -> str:
        return self.location.url

    @property
    def num_samples(self) -> int:
        return self.manifest.num_samples

    @property
    def teachers(self) -> list[str]:
        return sorted(self.manifest.teachers)

    def teacher(self, name: str | None = None) -> TeacherRecord:
        """The record of teacher ``name`` (or of the only teacher when ``name`` is None)."""
        return teacher_record(self.manifest, self.url, name)

    def require(self, requirements: Requirements) -> None:
        """Refuse this store for a run it does not fit (see :class:`Requirements`); the one check every path uses.

        >>> cache.require(Requirements(teachers=("cnn64",), targets=("logits",), views=views.spec()))  # doctest: +SKIP
        """
        check(self.manifest, self.url, requirements)

    def require_complete(self, teacher: str) -> None:
        self.require(Requirements(teachers=(teacher,)))

    # ---------------------------------------------------------------- arrays
    def open_array(self, path: str) -> zarr.Array:
        return open_zarr_array(self.location, path)

    def commits_of(self, owner: str) -> list[ShardCommit]:
        if owner == SAMPLES_OWNER:
            return self.manifest.samples.shards
        return self.manifest.teachers[owner.removeprefix("teachers/")].shards

    def array_reader(self, record: ArrayRecord, owner: str, *, in_memory: bool) -> ArrayReader:
        files = {c.index: c.files[record.path] for c in self.commits_of(owner) if record.path in c.files}
        meta = self.manifest.metadata.get(f"{record.path}/zarr.json")
        return ArrayReader(self.location, record, files, in_memory=in_memory, meta=meta, shard_cache=self.shard_cache)

    def owner_arrays(self) -> dict[str, dict[str, ArrayRecord]]:
        """Every array of the store by owner (``samples``, ``teachers/<name>``), then by path."""
        owners = {SAMPLES_OWNER: dict(self.manifest.samples.arrays)}
        for name, teacher in self.manifest.teachers.items():
            owners[f"teachers/{name}"] = {r.path: r for t in teacher.targets.values() for r in t.arrays.values()}
        return owners

    def array_bytes(self, path: str) -> int:
        """Bytes on disk of one array's committed shards."""
        return sum(c.files[path].nbytes for c in self.manifest.all_commits() if path in c.files)

    def sample_index(self) -> np.ndarray:
        """Dataset index of every row (row r holds sample r unless a subset was cached)."""
        record = self.manifest.samples.arrays["samples/index"]
        return self.array_reader(record, SAMPLES_OWNER, in_memory=True).read_all()

    def labels(self) -> np.ndarray | None:
        record = self.manifest.samples.arrays.get("samples/label")
        return None if record is None else self.array_reader(record, SAMPLES_OWNER, in_memory=True).read_all()

    # ---------------------------------------------------------------- validation
    def check_layout(self) -> None:
        """Every ``zarr.json`` is the document the manifest pinned; every record describes what it names
        (:mod:`~kdcache.store.records`); every commit record is in its place; every array is Zarr v3, uses only
        allowed codecs and matches its record; every committed shard exists with its size."""
        check_pinned_metadata(self.location, self.manifest)
        if problems := record_problems(self.url, self.manifest):
            raise StoreFormatError(problems[0])
        check_commits(self.url, self.manifest, self.owner_arrays())
        for records in self.owner_arrays().values():
            for record in records.values():
                check_array_metadata(self.location, record)
        check_shard_sizes(self.location, self.manifest)

    def check_digests(self) -> list[str]:
        """Size and SHA-256 of every committed shard file. Returns one line per problem found."""
        problems: list[str] = []
        for commit in self.manifest.all_commits():
            for path, digest in commit.files.items():
                try:
                    check_digest(self.location, path, commit.index, commit.start, commit.stop, digest)
                except CorruptShardError as exc:
                    problems.append(str(exc))
        return problems

    def scrub(self) -> list[str]:
        """Every problem of the store (``kdcache verify``): metadata, shard counts, sizes and digests."""
        return scrub_problems(self.location, self.manifest, self.owner_arrays())


def open_store(
    url: str,
    *,
    storage_options: dict[str, Any] | None = None,
    shard_cache: str | Path | None = None,
    shard_cache_bytes: int = DEFAULT_SHARD_CACHE_BYTES,
) -> StoreReader:
    """Open a kdcache store for reading: manifest, format version, codec allow-list and shard sizes are checked.

    With ``shard_cache`` (a local directory), every shard read is kept there whole, SHA-256 checked, up to
    ``shard_cache_bytes`` (least recently used shards evicted), so later epochs of a remote store read local disk
    (:mod:`kdcache.store.shardcache`).

    >>> cache = open_store("runs/digits_kd/cache/train.zarr")  # doctest: +SKIP
    >>> cache.teachers
    ['cnn64']
    """
    location = StoreLocation(url, storage_options)
    local = None if shard_cache is None else ShardCache(shard_cache, shard_cache_bytes)
    with io_errors(location, "opening"):
        cache = StoreReader(location, read_manifest(location), local)
        cache.check_layout()
    return cache


def scrub(url: str, *, storage_options: dict[str, Any] | None = None) -> list[str]:
    """A full check of a store against its manifest (``kdcache verify``): every array's metadata, every committed
    shard's size and SHA-256, and every complete owner's shard count. Returns one line per problem; unlike
    :func:`open_store` it does not stop at the first one. A missing or unreadable manifest is raised as an error."""
    location = StoreLocation(url, storage_options)
    with io_errors(location, "verifying"):
        return StoreReader(location, read_manifest(location)).scrub()
