"""Decoding a shard's inner chunks from bytes kdcache has checked, never from a separate read.

A shard file is checked against its manifest SHA-256 when a reader first touches it (:mod:`kdcache.store.arrays`).
From those verified bytes the reader keeps where each inner chunk lies in the file and an XXH3-128 of its bytes
(:func:`chunk_spans`); a chunk read again later (after the reader's chunk cache evicted it) is one range read whose
bytes must hash to what was verified, and it is decoded from exactly those bytes (:class:`ChunkDecoder`: zarr's own
inner codec pipeline, crc32c included, over an in-memory one-chunk array; kdcache's uncompressed layout is read
without a decode instead, rows included: :mod:`kdcache.store.direct`). So every decoded byte is a verified byte,
whatever happens to the file between epochs.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

import numpy as np
import xxhash
import zarr
from zarr.core.buffer import cpu
from zarr.storage import MemoryStore

EMPTY = 2**64 - 1  # offset and length of an inner chunk that was never written (all fill value)


@dataclass(frozen=True)
class ChunkSpan:
    """Where one inner chunk lies in its verified shard file, and the XXH3-128 of its bytes there."""

    offset: int
    nbytes: int
    digest: str

    @property
    def empty(self) -> bool:
        return self.offset == EMPTY


def chunk_digest(data: bytes) -> str:
    """XXH3-128 of a chunk's bytes: 3 GB/s, so remembering every chunk of a verified shard costs a quarter of its
    SHA-256. It is compared only with the digest of bytes whose SHA-256 was checked, so it detects any change of
    the file since then; forging a collision would take rewriting the store, which the manifest's seal does not
    stop either (docs/store-format.md, "What the seal protects")."""
    return xxhash.xxh3_128_hexdigest(data)


def chunk_spans(meta: dict[str, Any], raw: bytes, chunks_per_shard: int) -> list[ChunkSpan]:
    """Every inner chunk's span in the shard file ``raw`` (already checked against its SHA-256), from the shard
    index that ``meta`` (the array's ``zarr.json``) places at the end or the start of the file."""
    config = meta["codecs"][0]["configuration"]
    index_checksum = 4 if any(c.get("name") == "crc32c" for c in config.get("index_codecs", [])) else 0
    size = chunks_per_shard * 16
    start = 0 if config.get("index_location", "end") == "start" else len(raw) - size - index_checksum
    entries = np.frombuffer(raw[start : start + size], dtype="<u8").reshape(chunks_per_shard, 2)
    spans = []
    for offset, nbytes in entries.tolist():
        data = b"" if offset == EMPTY else raw[offset : offset + nbytes]
        spans.append(ChunkSpan(offset, nbytes, chunk_digest(data)))
    return spans


class ChunkDecoder:
    """Decodes one inner chunk's bytes with the array's inner codecs (zarr's pipeline, crc32c checked)."""

    def __init__(self, meta: dict[str, Any], dtype: str) -> None:
        config = meta["codecs"][0]["configuration"]
        shape = list(config["chunk_shape"])
        inner = {
            **meta,
            "shape": shape,
            "chunk_grid": {"name": "regular", "configuration": {"chunk_shape": shape}},
            "codecs": config["codecs"],
            "attributes": {},
        }
        self._key = "c/" + "/".join(["0"] * len(shape))
        self._store: dict[str, Any] = {"zarr.json": cpu.Buffer.from_bytes(json.dumps(inner).encode())}
        self._array = zarr.open_array(MemoryStore(self._store), mode="r", zarr_format=3)
        self._fill = np.full(shape, np.nan if np.issubdtype(np.dtype(dtype), np.floating) else 0, dtype=dtype)

    def decode(self, data: bytes | None) -> np.ndarray:
        """The chunk's values (``None``: a chunk never written, all fill value)."""
        if data is None:
            return self._fill.copy()
        self._store[self._key] = cpu.Buffer.from_bytes(data)
        try:
            return np.asarray(self._array[...])
        finally:
            del self._store[self._key]
