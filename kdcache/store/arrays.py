"""Rows of one array of a store, read a batch at a time: whole-array in RAM, or streamed.

Only committed shards are read, each checked against its size and SHA-256 the first time it is touched, and every
value comes from verified bytes: the shard's own, or bytes read again later and checked against the digest they had
when the shard was verified (:mod:`kdcache.store.shardbytes`). Streamed reads keep a small LRU of inner chunks
(never one sample per zarr call, which is 100-500x slower: PERFORMANCE.md). Arrays in kdcache's uncompressed layout
are read without a decode (:mod:`kdcache.store.direct`): a chunk is a copy of its checked bytes, and a chunk of
which a call wants only a few rows (a uniform order) is read row by row, each row checked against its own digest,
so no order pays a whole chunk per sample. Compressed arrays are decoded by zarr-python.
"""

from __future__ import annotations

import json
import os
from collections import Counter
from collections.abc import Callable
from functools import partial
from typing import Any

import numpy as np
import zarr

from kdcache.errors import CorruptShardError
from kdcache.store.chunkslab import ChunkSlab
from kdcache.store.direct import ROW_DIGEST_BYTES, DirectLayout, OpenFiles, chunk_ordered, is_direct
from kdcache.store.integrity import check_digest
from kdcache.store.layout import row_nbytes, shard_count, shard_range
from kdcache.store.location import StoreLocation, io_errors
from kdcache.store.manifest import ArrayRecord, FileDigest
from kdcache.store.shardbytes import ChunkDecoder, ChunkSpan, chunk_digest, chunk_spans
from kdcache.store.shardcache import ShardCache

DEFAULT_CHUNK_CACHE_BYTES = 64 * 1024 * 1024
UNVERIFIED, UNWRITTEN = -2, -1  # chunk offsets of a shard not verified yet, and of a chunk never written


def open_zarr_array(location: StoreLocation, path: str) -> zarr.Array:
    """The Zarr v3 array at ``path`` of the store, read-only."""
    return zarr.open_array(location.zarr_store(read_only=True), path=path, mode="r", zarr_format=3)


class ArrayReader:
    """Rows of one array, read in batches; whole-array in RAM or streamed. Picklable for DataLoader workers."""

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
        self._direct: DirectLayout | None = None
        self._is_direct: bool | None = None
        self._offsets = np.full(shard_count(record.shape[0], self.chunk), UNVERIFIED, dtype=np.int64)  # per inner chunk
        self._row_digests: np.ndarray | None = None  # (rows, 16): XXH3-128 of each verified row (direct, streamed)
        self._open = OpenFiles()
        self._slab: ChunkSlab | None = None  # streamed: the cache of inner chunks, made on first use
        #: how many times each inner chunk was read from the store, whole or the rows a call wanted (streamed reads;
        #: a whole-array load is not counted)
        self.chunks_read: Counter[int] = Counter()
        self._chunk_budget = max(1, DEFAULT_CHUNK_CACHE_BYTES // max(1, self._chunk_nbytes()))

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        state.update(_array=None, _slab=None, _decoder=None, _open=OpenFiles())  # reopened per process
        return state

    def _chunk_nbytes(self) -> int:
        return row_nbytes(tuple(self.record.chunks), self.record.dtype)

    def array(self) -> zarr.Array:
        if self._array is None or self._array_pid != os.getpid():  # zarr handles are not fork-safe on fsspec stores
            self._array = open_zarr_array(self.location, self.record.path)
            self._array_pid = os.getpid()
        return self._array

    @property
    def direct(self) -> bool:
        """Whether the array is in kdcache's uncompressed layout, read without a decode (:mod:`~kdcache.store.direct`)."""
        if self._is_direct is None:
            self._is_direct = is_direct(self.meta())
        return self._is_direct

    def verify_shard(self, index: int) -> bytes | None:
        """Check shard ``index`` against its size and SHA-256 once per reader, keeping each inner chunk's span and
        digest in the verified bytes (:func:`~kdcache.store.shardbytes.chunk_spans`) and, for the uncompressed
        layout, checking each chunk's size and crc32c and keeping each row's digest. Returns the verified bytes on
        the first call, ``None`` once the shard is verified already."""
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
        spans = chunk_spans(self.meta(), raw, self.shard // self.chunk)
        if self.direct:
            self._check_direct(index, raw, spans)
        self._spans[index] = spans
        return raw

    def _check_direct(self, index: int, raw: bytes, spans: list[ChunkSpan]) -> None:
        """Each written inner chunk of a verified uncompressed shard: its size and crc32c, and (streamed) the
        digest of each of its rows; then where each chunk starts, for row reads."""
        layout, view = self._layout(), memoryview(raw)
        first = index * (self.shard // self.chunk)
        for local, span in enumerate(spans[: len(self._offsets) - first]):
            if span.empty:
                self._offsets[first + local] = UNWRITTEN
                continue
            data = view[span.offset : span.offset + span.nbytes]
            if problem := layout.check_chunk(data):
                raise self._corrupt(index, f"inner chunk {local} {problem}")
            if not self.in_memory:
                if self._row_digests is None:
                    self._row_digests = np.zeros((len(self._offsets) * self.chunk, ROW_DIGEST_BYTES), np.uint8)
                lo = (first + local) * self.chunk
                self._row_digests[lo : lo + self.chunk] = layout.row_digests(data)
            self._offsets[first + local] = span.offset

    def _layout(self) -> DirectLayout:
        if self._direct is None:
            config = self.meta()["codecs"][0]["configuration"]
            self._direct = DirectLayout(config["chunk_shape"], self.record.dtype)
        return self._direct

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
        return shard_count(self.record.shape[0], self.shard)

    def shard_range(self, index: int) -> tuple[int, int]:
        return shard_range(index, self.record.shape[0], self.shard)

    def read_shard(self, index: int) -> np.ndarray:
        """The rows of shard ``index``, decoded from the bytes whose SHA-256 was checked."""
        lo, hi = self.shard_range(index)
        with io_errors(self.location, f"reading {self.record.path} shard {index}"):
            raw = self.verify_shard(index)
            blocks = [self._decoded(index, local, raw) for local in range(shard_count(hi - lo, self.chunk))]
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
        views = None if views is None else np.asarray(views, dtype=np.int64)
        if self.in_memory:
            data = self.read_all()
            if views is None:
                return np.take(data, rows, axis=0)
            if data.shape[1] == 1 and not views.any():  # one view: one take, 2x cheaper than a (row, view) gather
                return np.take(data[:, 0], rows, axis=0)
            return data[rows, views]
        tail = self.record.shape[1:] if views is None else self.record.shape[2:]
        out = np.empty((len(rows), *tail), dtype=self.record.dtype)
        chunk_ids = rows // self.chunk
        every = np.bincount(chunk_ids)  # chunk ids are small: cheaper than np.unique, which sorts
        present = every > 0
        cids, inverse, counts = np.flatnonzero(present), (np.cumsum(present) - 1)[chunk_ids], every[present]
        whole = self._read_whole(cids, counts)
        local = rows - chunk_ids * self.chunk
        if whole is None:
            self._gather_whole(cids, inverse, local, views, out, None)
            return out
        by_row = whole[inverse]
        if by_row.any():
            sel, kept = np.nonzero(by_row)[0], cids[whole]
            picked = None if views is None else views[sel]
            self._gather_whole(kept, np.searchsorted(kept, chunk_ids[sel]), local[sel], picked, out, sel)
        sel = np.nonzero(~by_row)[0]
        shards = chunk_ids[sel] // (self.shard // self.chunk)
        for index in np.unique(shards).tolist():
            part = sel[shards == index]
            got = self._rows_of(index, rows[part])
            out[part] = got if views is None else got[np.arange(len(part)), views[part]]
        return out

    def _gather_whole(
        self,
        cids: np.ndarray,
        at: np.ndarray,
        local: np.ndarray,
        views: np.ndarray | None,
        out: np.ndarray,
        sel: np.ndarray | None,
    ) -> None:
        """``out[sel]`` (all of ``out`` when ``sel`` is None) = row ``local[j]`` of chunk ``cids[at[j]]``, the chunks
        loaded into the chunk cache as needed; a cache-full of chunks at a time when a call wants more."""
        slab = self._chunk_slab()
        if len(cids) > slab.capacity:
            for first in range(0, len(cids), slab.capacity):
                pos = np.nonzero((at >= first) & (at < first + slab.capacity))[0]
                self._gather_whole(
                    cids[first : first + slab.capacity],
                    at[pos] - first,
                    local[pos],
                    None if views is None else views[pos],
                    out,
                    pos if sel is None else sel[pos],
                )
            return
        slots = np.fromiter((slab.slot(c, self._load) for c in cids.tolist()), dtype=np.int64, count=len(cids))
        slab.gather(slots[at] * self.chunk + local, views, out, sel)

    def _chunk_slab(self) -> ChunkSlab:
        if self._slab is None:
            capacity = min(self._chunk_budget, len(self._offsets))
            self._slab = ChunkSlab(capacity, tuple(self.record.chunks), np.dtype(self.record.dtype))
        return self._slab

    def _read_whole(self, cids: np.ndarray, counts: np.ndarray) -> np.ndarray | None:
        """Which chunks a call reads whole (through the chunk cache): all of them for a compressed array, one not
        on local disk, or one that fits the chunk cache whole; else those cached, not verified yet, never written,
        or all of them when the call is chunk-ordered (:func:`~kdcache.store.direct.chunk_ordered`). ``None``: all."""
        local = self.location.is_local or self.shard_cache is not None
        fits = len(self._offsets) <= self._chunk_budget
        if not local or fits or not self.direct or chunk_ordered(len(counts), int(counts.sum()), self.chunk):
            return None
        slab = self._chunk_slab()
        cached = np.fromiter((c in slab for c in cids.tolist()), dtype=bool, count=len(cids))
        whole = cached | (self._offsets[cids] < 0)
        return None if whole.all() else whole

    def _rows_of(self, index: int, rows: np.ndarray) -> np.ndarray:
        """Rows of verified shard ``index`` read one by one from its local file, each checked against its digest;
        where the shard cache's file is gone or changed, the chunks are read whole instead (and re-fetched)."""
        cids = rows // self.chunk
        offsets = self._offsets[cids] + (rows - cids * self.chunk) * self._layout().row_nbytes
        assert self._row_digests is not None  # set when any shard of a direct array is verified, before rows are read
        digests = self._row_digests[rows]
        path = self._local_file(index)
        with io_errors(self.location, f"reading {self.record.path} shard {index}"):
            try:
                got = None if path is None else self._layout().read_rows(self._open.fd(path), offsets, digests)
            except FileNotFoundError:
                got = None
            if isinstance(got, int) and self.shard_cache is None:
                raise self._changed(index, int(cids[got] % (self.shard // self.chunk)))
            if isinstance(got, int) and path is not None:  # a row of the local file changed: reopen it next time
                self._open.forget(path)
        if isinstance(got, np.ndarray):
            self.chunks_read.update(np.unique(cids).tolist())
            return got
        slab = self._chunk_slab()
        found = [
            slab.block(slab.slot(c, self._load))[r - c * self.chunk].copy()  # copied before the next
            for c, r in zip(cids.tolist(), rows.tolist(), strict=True)
        ]  # load can reuse the slot
        return np.stack(found)

    def _local_file(self, index: int) -> str | None:
        """The local file holding shard ``index``'s verified bytes: the store's own, or the shard cache's copy."""
        digest = self.files[index]
        if self.shard_cache is None:
            return f"{self.location.root.rstrip('/')}/{digest.key}"
        if not self.shard_cache.keeps(digest):
            return None
        path = self.shard_cache.file_of(digest)
        try:
            os.utime(path)  # used: last to be evicted (the shard cache's LRU order)
        except FileNotFoundError:
            return None
        return str(path)

    def _load(self, cid: int, out: np.ndarray) -> None:
        """Inner chunk ``cid`` into ``out`` (a slot of the chunk cache), from verified bytes."""
        lo, hi = cid * self.chunk, min((cid + 1) * self.chunk, self.record.shape[0])
        index, local = divmod(cid, self.shard // self.chunk)
        with io_errors(self.location, f"reading {self.record.path} samples {lo}..{hi - 1}"):
            self._decoded(index, local, self.verify_shard(index), out)
        self.chunks_read[cid] += 1

    def _decoded(self, index: int, local: int, raw: bytes | None, out: np.ndarray | None = None) -> np.ndarray:
        """Inner chunk ``local`` of shard ``index`` (into ``out`` when given): cut from ``raw`` (the shard's bytes,
        just verified) or read again and checked against the digest its bytes had when the shard was verified."""
        span = self._spans[index][local]
        if self._decoder is None:
            self._decoder = ChunkDecoder(self.meta(), self.record.dtype)
        if self.direct and not span.empty:
            return self._direct_chunk(
                index, local, raw, np.empty(self._layout().chunk_shape, self._layout().dtype) if out is None else out
            )
        if span.empty:
            block = self._decoder.decode(None)
        else:
            data = raw[span.offset : span.offset + span.nbytes] if raw is not None else self._reread(index, span)
            if raw is None and chunk_digest(data) != span.digest:
                raise self._changed(index, local)
            block = self._decoder.decode(data)
        if out is None:
            return block
        out[...] = block
        return out

    def _direct_chunk(self, index: int, local: int, raw: bytes | None, out: np.ndarray) -> np.ndarray:
        """An uncompressed inner chunk's values, copied into ``out``: from ``raw`` (just verified), else read again
        with one ``pread`` of the local file (or :meth:`_reread`) and checked against its digest."""
        span, layout = self._spans[index][local], self._layout()
        if raw is not None:
            return layout.fill(out, memoryview(raw)[span.offset : span.offset + span.nbytes])
        path = self._local_file(index)
        try:
            if path is not None and layout.read_chunk(self._open.fd(path), span, out):
                return out
        except FileNotFoundError:
            pass
        if path is not None:
            self._open.forget(path)
        data = self._reread(index, span)  # the shard cache's file changed or is gone: fetched again and verified
        if chunk_digest(data) != span.digest:
            raise self._changed(index, local)
        return layout.fill(out, memoryview(data))

    def _corrupt(self, index: int, what: str) -> CorruptShardError:
        lo, hi = self.shard_range(index)
        return CorruptShardError(
            f"store {self.location.url!r}, array {self.record.path}, shard {index} (samples {lo}..{hi - 1}, file "
            f"{self.files[index].key}): {what}. Run `kdcache verify`, then restore the store or rebuild it with "
            "`kdcache precompute`"
        )

    def _changed(self, index: int, local: int) -> CorruptShardError:
        return self._corrupt(
            index,
            f"inner chunk {local} read again differs from the bytes whose sha256 was checked "
            "when the shard was first read; the file changed while it was being trained on",
        )

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
