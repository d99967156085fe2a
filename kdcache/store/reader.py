"""Reading a store: open and validate it, then read target rows a batch at a time (DESIGN.md §1, §3).

Only what the manifest lists is read. Every shard file is checked against its recorded size when the store is
opened and against its SHA-256 the first time a reader touches it, so a missing, truncated, flipped or swapped
shard raises :class:`CorruptShardError` instead of returning wrong numbers; zarr's crc32c codec checks each inner
chunk again on decode. Arrays that fit the RAM budget are loaded whole once; others are read whole chunks at a
time (never one sample per zarr call, which is 100-500x slower: PERFORMANCE.md) through a small chunk cache.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections import Counter, OrderedDict
from typing import Any

import numpy as np
import zarr

from kdcache.errors import (
    CorruptShardError,
    StoreFormatError,
    StoreIncompleteError,
    StoreMismatchError,
)
from kdcache.fingerprint import describe_difference
from kdcache.store.layout import ALLOWED_CODECS, SAMPLES_OWNER
from kdcache.store.location import StoreLocation, io_errors
from kdcache.store.manifest import ArrayRecord, FileDigest, Manifest, ShardCommit, TeacherRecord, read_manifest

DEFAULT_CHUNK_CACHE_BYTES = 64 * 1024 * 1024


class Cache:
    """An opened, validated store. Use :func:`open_cache`."""

    def __init__(self, location: StoreLocation, manifest: Manifest) -> None:
        self.location = location
        self.manifest = manifest

    def __repr__(self) -> str:
        return f"Cache({self.location.url!r}, {self.manifest.num_samples} samples, teachers={self.teachers})"

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
        if name is None:
            if len(self.manifest.teachers) != 1:
                raise StoreMismatchError(
                    f"store {self.url!r} holds teachers {self.teachers}; name the one to use (teacher.name)"
                )
            name = self.teachers[0]
        if name not in self.manifest.teachers:
            raise StoreMismatchError(f"store {self.url!r} has no teacher {name!r}; it holds {self.teachers}")
        return self.manifest.teachers[name]

    # ---------------------------------------------------------------- checks before training
    def require_complete(self, teacher: str) -> None:
        record = self.teacher(teacher)
        done = len(record.shards)
        if record.status != "complete" or self.manifest.samples.status != "complete":
            raise StoreIncompleteError(
                f"store {self.url!r}: teacher {teacher!r} is {record.status} ({done}/{self.manifest.num_shards()} "
                "shards committed). Finish it with `kdcache precompute` (it resumes where it stopped)"
            )

    def require_dataset(self, fingerprint: dict[str, Any]) -> None:
        """Refuse a store made from other data: length first (the commonest mistake), then every other fact."""
        found = self.manifest.dataset
        if found.get("length") != fingerprint.get("length"):
            raise StoreMismatchError(
                f"store {self.url!r} holds {found.get('length')} samples but the training set has "
                f"{fingerprint.get('length')}. Rebuild the store for this dataset (kdcache precompute) or point "
                "cache.store at the store made from it"
            )
        if found.get("digest") != fingerprint.get("digest"):
            raise StoreMismatchError(
                f"store {self.url!r} was built from a different dataset: {describe_difference(fingerprint, found)}. "
                "Rebuild the store for this dataset or point cache.store at the right one"
            )

    def require_views(self, views: dict[str, Any]) -> None:
        found = self.manifest.views
        if found.get("digest") != views.get("digest"):
            raise StoreMismatchError(
                f"store {self.url!r} was cached with other views: {describe_difference(views, found)}. Use the "
                "store's view spec in the pipeline (views:) or rebuild the store with this one"
            )

    # ---------------------------------------------------------------- arrays
    def open_array(self, path: str) -> zarr.Array:
        store = self.location.zarr_store(read_only=True)
        return zarr.open_array(store, path=path, mode="r", zarr_format=3)

    def owner_status(self) -> dict[str, tuple[str, list[ShardCommit]]]:
        """Status and commits of the sample arrays and of every teacher, by owner."""
        owners = {SAMPLES_OWNER: (self.manifest.samples.status, self.manifest.samples.shards)}
        owners |= {f"teachers/{n}": (t.status, t.shards) for n, t in self.manifest.teachers.items()}
        return owners

    def commits_of(self, owner: str) -> list[ShardCommit]:
        if owner == SAMPLES_OWNER:
            return self.manifest.samples.shards
        return self.manifest.teachers[owner.removeprefix("teachers/")].shards

    def array_reader(self, record: ArrayRecord, owner: str, *, in_memory: bool) -> ArrayReader:
        files = {c.index: c.files[record.path] for c in self.commits_of(owner) if record.path in c.files}
        return ArrayReader(self, record, files, in_memory=in_memory)

    def owner_arrays(self) -> dict[str, dict[str, ArrayRecord]]:
        """Every array of the store by owner (``samples``, ``teachers/<name>``), then by path."""
        owners = {SAMPLES_OWNER: dict(self.manifest.samples.arrays)}
        for name, teacher in self.manifest.teachers.items():
            owners[f"teachers/{name}"] = {r.path: r for t in teacher.targets.values() for r in t.arrays.values()}
        return owners

    def sample_index(self) -> np.ndarray:
        """Dataset index of every row (row r holds sample r unless a subset was cached)."""
        record = self.manifest.samples.arrays["samples/index"]
        return self.array_reader(record, SAMPLES_OWNER, in_memory=True).read_all()

    def labels(self) -> np.ndarray | None:
        record = self.manifest.samples.arrays.get("samples/label")
        return None if record is None else self.array_reader(record, SAMPLES_OWNER, in_memory=True).read_all()

    # ---------------------------------------------------------------- validation on open
    def check_layout(self) -> None:
        """Every array is Zarr v3, uses only allowed codecs and matches the manifest; every committed shard exists
        with its recorded size."""
        for records in self.owner_arrays().values():
            for record in records.values():
                self.check_array_metadata(record)
        for commit in self.manifest.all_commits():
            for path, digest in commit.files.items():
                size = self.location.size(digest.key)
                if size != digest.nbytes:
                    raise self.corrupt(path, commit.index, commit.start, commit.stop, digest, size)

    def check_array_metadata(self, record: ArrayRecord) -> None:
        try:
            meta = json.loads(self.location.read_bytes(f"{record.path}/zarr.json"))
        except (FileNotFoundError, ValueError) as exc:
            raise StoreFormatError(
                f"store {self.url!r}: metadata of {record.path} is missing or unreadable ({exc})"
            ) from None
        if not isinstance(meta, dict):
            raise StoreFormatError(f"store {self.url!r}: metadata of {record.path} is not a JSON object")
        if meta.get("zarr_format") != 3 or meta.get("node_type") != "array":
            raise StoreFormatError(f"store {self.url!r}: {record.path} is not a Zarr v3 array; only v3 stores are read")
        codecs = _codec_names(meta.get("codecs", []))
        if not codecs <= ALLOWED_CODECS:
            raise StoreFormatError(
                f"store {self.url!r}: {record.path} uses codecs {sorted(codecs - ALLOWED_CODECS)} outside kdcache's "
                f"allow-list {sorted(ALLOWED_CODECS)}; refusing to decode it"
            )
        found = _layout_of(meta)
        expected = (record.shape, record.dtype, record.shards, record.chunks, _fill_of(record.dtype))
        if found != expected:
            raise StoreFormatError(
                f"store {self.url!r}: {record.path} has (shape, dtype, shard, chunk, fill) {found}; the manifest "
                f"says {expected}. The array's zarr.json was changed after the store was written: restore it or "
                "rebuild the store"
            )

    def corrupt(
        self, path: str, index: int, start: int, stop: int, digest: FileDigest, size: int | None, why: str = ""
    ) -> CorruptShardError:
        found = "missing" if size is None else f"{size} bytes"
        return CorruptShardError(
            f"store {self.url!r}, array {path}, shard {index} (samples {start}..{stop - 1}, file {digest.key}): "
            f"expected {digest.nbytes} bytes with sha256 {digest.sha256[:12]}…, found {found}{why}. "
            "Run `kdcache verify` to list every damaged shard, then restore them or rebuild with `kdcache precompute`"
        )

    def verify(self) -> list[str]:
        """Full scrub: size and SHA-256 of every committed shard file. Returns one line per problem found."""
        problems: list[str] = []
        for commit in self.manifest.all_commits():
            for path, digest in commit.files.items():
                try:
                    _check_digest(self, path, commit.index, commit.start, commit.stop, digest)
                except CorruptShardError as exc:
                    problems.append(str(exc))
        return problems


class ArrayReader:
    """Rows of one array, read in batches; whole-array in RAM or chunk-streamed. Picklable for DataLoader workers."""

    def __init__(self, cache: Cache, record: ArrayRecord, files: dict[int, FileDigest], *, in_memory: bool) -> None:
        self.cache = cache
        self.record = record
        self.files = files
        self.in_memory = in_memory
        self.chunk = record.chunks[0]
        self.shard = record.shards[0]
        self._array: zarr.Array | None = None
        self._array_pid = os.getpid()
        self._data: np.ndarray | None = None
        self._verified: set[int] = set()
        self._chunks: OrderedDict[int, np.ndarray] = OrderedDict()
        #: how many times each inner chunk was read from the store (streamed reads; a whole-array load is not counted)
        self.chunks_read: Counter[int] = Counter()
        self._chunk_budget = max(1, DEFAULT_CHUNK_CACHE_BYTES // max(1, self._chunk_nbytes()))

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        state.update(_array=None, _chunks=OrderedDict())  # zarr handles are reopened in each process
        return state

    def _chunk_nbytes(self) -> int:
        return int(np.prod(self.record.chunks, dtype=np.int64)) * np.dtype(self.record.dtype).itemsize

    def array(self) -> zarr.Array:
        if self._array is None or self._array_pid != os.getpid():  # zarr handles are not fork-safe on fsspec stores
            self._array = self.cache.open_array(self.record.path)
            self._array_pid = os.getpid()
        return self._array

    def verify_shard(self, index: int) -> None:
        """Check shard ``index`` against its size and digest once per reader."""
        if index in self._verified:
            return
        digest = self.files.get(index)
        start = index * self.shard
        stop = min(start + self.shard, self.record.shape[0])
        if digest is None:
            raise CorruptShardError(
                f"store {self.cache.url!r}, array {self.record.path}: shard {index} (samples {start}..{stop - 1}) "
                "is not committed in the manifest, so it cannot be read. Finish the store with `kdcache precompute`"
            )
        _check_digest(self.cache, self.record.path, index, start, stop, digest)
        self._verified.add(index)

    @property
    def num_shards(self) -> int:
        return -(-self.record.shape[0] // self.shard)

    def shard_range(self, index: int) -> tuple[int, int]:
        return index * self.shard, min((index + 1) * self.shard, self.record.shape[0])

    def read_shard(self, index: int) -> np.ndarray:
        """The rows of shard ``index``, verified against the manifest before they are decoded."""
        lo, hi = self.shard_range(index)
        with io_errors(self.cache.location, f"reading {self.record.path} shard {index}"):
            self.verify_shard(index)
            return np.asarray(self.array()[lo:hi])

    def read_all(self) -> np.ndarray:
        """The whole array, shard by shard, each shard verified before use."""
        if self._data is None:
            out = np.empty(self.record.shape, dtype=self.record.dtype)
            for index in range(self.num_shards):
                lo, hi = self.shard_range(index)
                out[lo:hi] = self.read_shard(index)
            self._data = out
        return self._data

    def read_rows(self, rows: np.ndarray, views: np.ndarray | None = None) -> np.ndarray:
        """Rows ``rows`` (any order, repeats allowed) as one array ``(len(rows), ...)``; with ``views``, only view
        ``views[j]`` of row ``rows[j]`` (axis 1 is dropped)."""
        rows = np.asarray(rows, dtype=np.int64)
        if self.in_memory:
            data = self.read_all()
            return np.take(data, rows, axis=0) if views is None else data[rows, np.asarray(views, dtype=np.int64)]
        tail = self.record.shape[1:] if views is None else self.record.shape[2:]
        out = np.empty((len(rows), *tail), dtype=self.record.dtype)
        chunk_ids = rows // self.chunk
        for cid in np.unique(chunk_ids):
            sel = np.nonzero(chunk_ids == cid)[0]
            block = self._chunk(int(cid))
            local = rows[sel] - cid * self.chunk
            out[sel] = block[local] if views is None else block[local, np.asarray(views)[sel]]
        return out

    def _chunk(self, cid: int) -> np.ndarray:
        if cid in self._chunks:
            self._chunks.move_to_end(cid)
            return self._chunks[cid]
        lo, hi = cid * self.chunk, min((cid + 1) * self.chunk, self.record.shape[0])
        with io_errors(self.cache.location, f"reading {self.record.path} samples {lo}..{hi - 1}"):
            self.verify_shard(cid * self.chunk // self.shard)
            block = np.asarray(self.array()[lo:hi])
        self.chunks_read[cid] += 1
        self._chunks[cid] = block
        if len(self._chunks) > self._chunk_budget:
            self._chunks.popitem(last=False)
        return block


def open_cache(url: str, *, storage_options: dict[str, Any] | None = None) -> Cache:
    """Open a kdcache store for reading: manifest, format version, codec allow-list and shard sizes are checked.

    >>> cache = open_cache("runs/digits_kd/cache/train.zarr")  # doctest: +SKIP
    >>> cache.teachers
    ['cnn64']
    """
    location = StoreLocation(url, storage_options)
    with io_errors(location, "opening"):
        cache = Cache(location, read_manifest(location))
        cache.check_layout()
    return cache


def scrub(url: str, *, storage_options: dict[str, Any] | None = None) -> list[str]:
    """A full check of a store against its manifest (``kdcache verify``): every array's metadata, every committed
    shard's size and SHA-256, and every complete owner's shard count. Returns one line per problem; unlike
    :func:`open_cache` it does not stop at the first one. A missing or unreadable manifest is raised as an error."""
    location = StoreLocation(url, storage_options)
    with io_errors(location, "verifying"):
        cache = Cache(location, read_manifest(location))
        problems = []
        for records in cache.owner_arrays().values():
            for record in records.values():
                try:
                    cache.check_array_metadata(record)
                except StoreFormatError as exc:
                    problems.append(str(exc))
        for owner, (status, commits) in cache.owner_status().items():
            if status == "complete" and [c.index for c in commits] != list(range(cache.manifest.num_shards())):
                problems.append(f"store {url!r}: {owner} is marked complete but its manifest lists shards "
                                f"{[c.index for c in commits]} of {cache.manifest.num_shards()}")  # fmt: skip
        return problems + cache.verify()


def _check_digest(cache: Cache, path: str, index: int, start: int, stop: int, digest: FileDigest) -> None:
    try:
        raw = cache.location.read_bytes(digest.key)
    except FileNotFoundError:
        raise cache.corrupt(path, index, start, stop, digest, None) from None
    if len(raw) != digest.nbytes:
        raise cache.corrupt(path, index, start, stop, digest, len(raw))
    actual = hashlib.sha256(raw).hexdigest()
    if actual != digest.sha256:
        raise cache.corrupt(path, index, start, stop, digest, len(raw), f" with sha256 {actual[:12]}…")


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


def _codec_names(codecs: Any) -> set[str]:
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
        names |= _codec_names(config.get("codecs", [])) | _codec_names(config.get("index_codecs", []))
    return names
