"""Rows of one array of a store, read a batch at a time: whole-array in RAM, or streamed whole chunks at a time.

Only committed shards are read, each checked against its size and SHA-256 the first time it is touched, and every
value is decoded from verified bytes: the shard's own, or an inner chunk read again after the chunk cache evicted
it, checked against the digest its bytes had when the shard was verified (:mod:`kdcache.store.shardbytes`). Streamed
reads go through a small LRU of decoded inner chunks (never one sample per zarr call, which is 100-500x slower:
PERFORMANCE.md).
"""

from __future__ import annotations

import json
import os
from collections import Counter, OrderedDict
from collections.abc import Callable
from functools import partial
from typing import Any

import numpy as np
import zarr

from kdcache.errors import CorruptShardError
from kdcache.store.integrity import check_digest
from kdcache.store.location import StoreLocation, io_errors
from kdcache.store.manifest import ArrayRecord, FileDigest
from kdcache.store.shardbytes import ChunkDecoder, ChunkSpan, chunk_digest, chunk_spans
from kdcache.store.shardcache import ShardCache

DEFAULT_CHUNK_CACHE_BYTES = 64 * 1024 * 1024


def open_zarr_array(location: StoreLocation, path: str) -> zarr.Array:
    """The Zarr v3 array at ``path`` of the store, read-only."""
    return zarr.open_array(location.zarr_store(read_only=True), path=path, mode="r", zarr_format=3)


class ArrayReader:
    """Rows of one array, read in batches; whole-array in RAM or chunk-streamed. Picklable for DataLoader workers."""

    def __init__(
        self,
        location: StoreLocation,
        record: ArrayRecord,
        files: dict[int, FileDigest],
        *,
        in_memory: bool,
        meta: dict[str, Any] | None = None,
        shard_cache: ShardCache | None = None,
    ) -> None:
        self.location = location
        self.shard_cache = shard_cache  # whole shard files kept on local disk (remote stores), or None
        self.record = record
        self.files = files
        self.in_memory = in_memory
        self.chunk = record.chunks[0]
        self.shard = record.shards[0]
        self._array: zarr.Array | None = None
        self._array_pid = os.getpid()
        self._data: np.ndarray | None = None
        self._spans: dict[int, list[ChunkSpan]] = {}  # verified shards: each inner chunk's span and digest
        self._meta = meta  # the manifest's pinned zarr.json: what the shards are decoded with
        self._decoder: ChunkDecoder | None = None
        self._chunks: OrderedDict[int, np.ndarray] = OrderedDict()
        #: how many times each inner chunk was read from the store (streamed reads; a whole-array load is not counted)
        self.chunks_read: Counter[int] = Counter()
        self._chunk_budget = max(1, DEFAULT_CHUNK_CACHE_BYTES // max(1, self._chunk_nbytes()))

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        state.update(_array=None, _chunks=OrderedDict(), _decoder=None)  # zarr handles are reopened in each process
        return state

    def _chunk_nbytes(self) -> int:
        return int(np.prod(self.record.chunks, dtype=np.int64)) * np.dtype(self.record.dtype).itemsize

    def array(self) -> zarr.Array:
        if self._array is None or self._array_pid != os.getpid():  # zarr handles are not fork-safe on fsspec stores
            self._array = open_zarr_array(self.location, self.record.path)
            self._array_pid = os.getpid()
        return self._array

    def verify_shard(self, index: int) -> bytes | None:
        """Check shard ``index`` against its size and SHA-256 once per reader, keeping each inner chunk's span and
        digest in the verified bytes (:func:`~kdcache.store.shardbytes.chunk_spans`). Returns the verified bytes
        on the first call, ``None`` once the shard is verified already."""
        if index in self._spans:
            return None
        digest = self.files.get(index)
        start, stop = self.shard_range(index)
        if digest is None:
            raise CorruptShardError(
                f"store {self.location.url!r}, array {self.record.path}: shard {index} (samples {start}..{stop - 1}) "
                "is not committed in the manifest, so it cannot be read. Finish the store with `kdcache precompute`"
            )
        if self.shard_cache is None:
            raw = self._fetch(index)()
        else:
            raw = self.shard_cache.shard(digest, self._fetch(index))
            ahead = [i for i in range(index + 1, index + 1 + self.shard_cache.prefetch_depth) if i in self.files]
            self.shard_cache.prefetch([(self.files[i], self._fetch(i)) for i in ahead])
        self._spans[index] = chunk_spans(self.meta(), raw, self.shard // self.chunk)
        return raw

    def _fetch(self, index: int) -> Callable[[], bytes]:
        """Reads committed shard ``index`` from the store and checks its size and SHA-256."""
        start, stop = self.shard_range(index)
        return partial(check_digest, self.location, self.record.path, index, start, stop, self.files[index])

    def meta(self) -> dict[str, Any]:
        """The array's ``zarr.json``: the manifest's pinned copy, or the file (checked against it when the store was
        opened)."""
        if self._meta is None:
            self._meta = json.loads(self.location.read_bytes(f"{self.record.path}/zarr.json"))
        return self._meta

    @property
    def num_shards(self) -> int:
        return -(-self.record.shape[0] // self.shard)

    def shard_range(self, index: int) -> tuple[int, int]:
        return index * self.shard, min((index + 1) * self.shard, self.record.shape[0])

    def read_shard(self, index: int) -> np.ndarray:
        """The rows of shard ``index``, decoded from the bytes whose SHA-256 was checked."""
        lo, hi = self.shard_range(index)
        with io_errors(self.location, f"reading {self.record.path} shard {index}"):
            raw = self.verify_shard(index)
            blocks = [self._decoded(index, local, raw) for local in range(-(-(hi - lo) // self.chunk))]
        return np.concatenate(blocks)[: hi - lo]

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
        index, local = divmod(cid, self.shard // self.chunk)
        with io_errors(self.location, f"reading {self.record.path} samples {lo}..{hi - 1}"):
            block = self._decoded(index, local, self.verify_shard(index))[: hi - lo]
        self.chunks_read[cid] += 1
        self._chunks[cid] = block
        if len(self._chunks) > self._chunk_budget:
            self._chunks.popitem(last=False)
        return block

    def _decoded(self, index: int, local: int, raw: bytes | None) -> np.ndarray:
        """Inner chunk ``local`` of shard ``index``: cut from ``raw`` (the shard's bytes, just verified) or read
        again as one range and checked against the digest its bytes had when the shard was verified."""
        span = self._spans[index][local]
        if self._decoder is None:
            self._decoder = ChunkDecoder(self.meta(), self.record.dtype)
        if span.empty:
            return self._decoder.decode(None)
        if raw is not None:
            return self._decoder.decode(raw[span.offset : span.offset + span.nbytes])
        key = self.files[index].key
        data = self._reread(index, span)
        if chunk_digest(data) != span.digest:
            lo, hi = self.shard_range(index)
            raise CorruptShardError(
                f"store {self.location.url!r}, array {self.record.path}, shard {index} (samples {lo}..{hi - 1}, file "
                f"{key}): inner chunk {local} read again differs from the bytes whose sha256 was checked when the "
                "shard was first read; the file changed while it was being trained on. Run `kdcache verify`, then "
                "restore the store or rebuild it with `kdcache precompute`"
            )
        return self._decoder.decode(data)

    def _reread(self, index: int, span: ChunkSpan) -> bytes:
        """An inner chunk's bytes read again: from the shard cache's file when it still holds the verified bytes (a
        file that does not is deleted, the shard fetched again and verified), else one range read of the store."""
        digest, stop = self.files[index], span.offset + span.nbytes
        cache = self.shard_cache
        if cache is not None and cache.keeps(digest):
            data = cache.read_range(digest, span.offset, stop)
            if data is not None and chunk_digest(data) == span.digest:
                return data
            if data is not None:
                cache.discard(digest, "changed since it was verified")
            return cache.shard(digest, self._fetch(index))[span.offset : stop]
        try:
            return self.location.read_range(digest.key, span.offset, stop)
        except FileNotFoundError:
            return b""
