"""A shard file's bytes made directly from its rows: exactly what zarr-python writes for a whole-shard write.

kdcache's arrays are sharded along axis 0 only (:func:`kdcache.store.writer.create_array`): an inner chunk holds
``chunks[0]`` samples and every other axis whole, so a shard is its inner chunks one after another (zarr's Morton
order over ``(n, 1, …, 1)`` chunks is plain order), then the shard index, ``n`` pairs of little-endian uint64
(offset, length), then the index's crc32c. Each inner chunk is its rows' little-endian bytes, compressed as the
array's codecs say (numcodecs' Blosc with the parameters zarr's ``BloscCodec`` gives it), then their crc32c.
A shard past the end of the array holds its partial chunk padded with the fill value and no chunk wholly past the
end (their index entries are 2^64 − 1), as zarr writes it.

Making the bytes here instead of through ``zarr.Array.__setitem__`` skips zarr's per-chunk asyncio pipeline: one
copy of the rows into the file's buffer, a crc32c per chunk, no read-back. tests/store/test_shardencode.py checks the
bytes against zarr's own for every dtype, compressor and edge the stores use, and the golden store pins them.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property

import google_crc32c
import numpy as np
from numcodecs import Blosc

EMPTY = np.uint64(2**64 - 1)  # index entry of an inner chunk that holds no byte
BLOSC = {"lz4": ("lz4", 5), "zstd": ("zstd", 1)}  # cname, clevel of each compressor (writer.compressors_for)


@dataclass(frozen=True)
class ShardEncoder:
    """How the shards of one array are laid out: samples per shard and per inner chunk, the array's length, the
    dtype, the shape after axis 0, the compressor and the fill value of rows past the end."""

    num_samples: int
    shard_samples: int
    chunk_samples: int
    dtype: np.dtype
    tail: tuple[int, ...]
    compressor: str

    @property
    def fill(self) -> float | int:
        return np.nan if np.issubdtype(self.dtype, np.floating) else 0

    @cached_property
    def _blosc(self) -> Blosc | None:
        if self.compressor == "none":
            return None
        cname, clevel = BLOSC[self.compressor]
        return Blosc.from_config(
            {"cname": cname, "clevel": clevel, "shuffle": Blosc.SHUFFLE, "blocksize": 0,
             "typesize": self.dtype.itemsize}
        )  # fmt: skip

    def encode(self, index: int, rows: np.ndarray) -> memoryview:
        """The bytes of shard ``index`` holding ``rows`` (every row of its range, in the array's dtype)."""
        start = index * self.shard_samples
        stop = min(start + self.shard_samples, self.num_samples)
        if rows.shape != (stop - start, *self.tail) or rows.dtype != self.dtype:
            raise ValueError(f"shard {index} needs rows {(stop - start, *self.tail)} of {self.dtype}, got "
                             f"{rows.shape} of {rows.dtype}")  # fmt: skip
        written = -(-(stop - start) // self.chunk_samples)  # chunks holding a sample of the array
        if self._blosc is None:
            return self._plain(rows, written)
        return self._compressed(rows, written)

    def _chunk(self, rows: np.ndarray, i: int, out: np.ndarray) -> None:
        """Inner chunk ``i`` of ``rows`` into ``out`` (its rows' shape): the rows, then the fill value past the end."""
        part = rows[i * self.chunk_samples : (i + 1) * self.chunk_samples]
        out[: len(part)] = part
        out[len(part) :] = self.fill

    def _plain(self, rows: np.ndarray, written: int) -> memoryview:
        """Uncompressed chunks, written once into the file's buffer: each chunk's bytes, then their crc32c."""
        width = self.chunk_samples * int(np.prod(self.tail, dtype=np.int64)) * self.dtype.itemsize
        out = self._file(written * (width + 4))
        body = out[: written * (width + 4)].reshape(written, width + 4)
        little = self.dtype.newbyteorder("<")
        for i in range(written):
            self._chunk(rows, i, body[i, :width].view(little).reshape(self.chunk_samples, *self.tail))
            body[i, width:] = np.array([google_crc32c.value(body[i, :width])], dtype="<u4").view(np.uint8)
        return self._finish(out, np.full(written, width + 4, dtype=np.uint64))

    def _compressed(self, rows: np.ndarray, written: int) -> memoryview:
        """Blosc-compressed chunks (one at a time through a scratch chunk), each followed by its crc32c."""
        scratch = np.empty((self.chunk_samples, *self.tail), dtype=self.dtype.newbyteorder("<"))
        parts = []
        for i in range(written):
            self._chunk(rows, i, scratch)
            packed = self._blosc.encode(scratch.reshape(-1).view(np.uint8))
            parts.append(packed + np.array([google_crc32c.value(packed)], dtype="<u4").tobytes())
        out = self._file(sum(len(p) for p in parts))
        at = 0
        for part in parts:
            out[at : at + len(part)] = np.frombuffer(part, dtype=np.uint8)
            at += len(part)
        return self._finish(out, np.array([len(p) for p in parts], dtype=np.uint64))

    def _file(self, body: int) -> np.ndarray:
        """The buffer of a shard file whose chunks take ``body`` bytes: room for the index and its crc32c."""
        return np.empty(body + (self.shard_samples // self.chunk_samples) * 16 + 4, dtype=np.uint8)

    def _finish(self, out: np.ndarray, lengths: np.ndarray) -> memoryview:
        """Write the shard index of chunks of ``lengths`` bytes (laid out in order) and its crc32c into ``out``."""
        entries = np.full((self.shard_samples // self.chunk_samples, 2), EMPTY, dtype="<u8")
        entries[: len(lengths), 1] = lengths
        entries[: len(lengths), 0] = np.cumsum(lengths) - lengths
        index = entries.reshape(-1).view(np.uint8)
        out[-4 - len(index) : -4] = index
        out[-4:] = np.array([google_crc32c.value(index)], dtype="<u4").view(np.uint8)
        return out.data


__all__ = ["ShardEncoder"]
