"""Reading the one layout kdcache writes uncompressed — ``bytes`` then ``crc32c`` inside ``sharding_indexed`` —
without a chunk decode: an inner chunk is its C-order values followed by their crc32c, so a row is a slice of it.

Measured (docs/design.md, "Direct reads of uncompressed chunks"): zarr-python takes 1.4-2.7 ms to read a 1 MB
chunk and tensorstore 1.0-1.5 ms, where ``pread`` + crc32c of the same bytes takes 0.06-0.11 ms, so no engine
reaches a memmap's rate; a uniform order that decoded a whole chunk per sample ran at 0.004x the block order. Every other layout (blosc,
transpose, a big-endian dtype) is decoded by zarr-python (:class:`~kdcache.store.shardbytes.ChunkDecoder`).

What is checked, and why it suffices:

* the shard's SHA-256 on first touch (:meth:`ArrayReader.verify_shard`), then each inner chunk's crc32c and size in
  those verified bytes (:meth:`DirectLayout.check_chunk`): what zarr's decode would check, once per chunk per reader;
* every byte read again later is compared with what the verified bytes held: a whole chunk by the XXH3-128 of its
  bytes (:func:`~kdcache.store.shardbytes.chunk_digest`), a single row by the XXH3-128 of that row, kept for every
  row of a verified shard (:meth:`DirectLayout.row_digests`, 16 bytes per row). Rows are read with ``pread`` into
  private memory and hashed there, so what is returned is exactly what was hashed: a file edited, replaced or
  truncated after verification is caught whatever the read pattern (a memmap could change under the check, and a
  truncated mapped file kills the process with SIGBUS).
"""

from __future__ import annotations

import os
from collections import OrderedDict
from itertools import repeat
from typing import Any

import google_crc32c
import numpy as np
import xxhash

from kdcache.store.layout import row_nbytes
from kdcache.store.shardbytes import ChunkSpan

CRC_BYTES = 4
ROW_DIGEST_BYTES = 16
MAX_OPEN_FILES = 32
#: a call is chunk-ordered (its chunks are read whole, into the chunk cache) when it wants at least this many rows
#: per chunk it touches on average, or 1/64 of a chunk if more: a block-shuffled batch wants dozens from each of a
#: few chunks (and the next batches the rest of them), a uniform one one or two from each of many, read row by row
MIN_ROWS_PER_CHUNK = 4


def chunk_ordered(chunks: int, rows: int, chunk_rows: int) -> bool:
    """Whether a call wanting ``rows`` rows from ``chunks`` inner chunks of ``chunk_rows`` rows reads them whole:
    one ``pread`` + XXH3 of a 1 MB chunk costs ~60 µs against ~0.5 µs per row read alone, so a chunk pays when
    the call and the batches after it use a good part of it."""
    return rows >= chunks * max(MIN_ROWS_PER_CHUNK, chunk_rows // 64)


def is_direct(meta: dict[str, Any]) -> bool:
    """Whether an array's ``zarr.json`` is kdcache's uncompressed layout: one sharding codec whose inner codecs are
    exactly ``bytes`` (little-endian, or a one-byte dtype) then ``crc32c``, on a little-endian machine."""
    codecs = meta.get("codecs") or [{}]
    if len(codecs) != 1 or codecs[0].get("name") != "sharding_indexed" or np.little_endian is False:
        return False
    inner = codecs[0].get("configuration", {}).get("codecs", [])
    if [c.get("name") for c in inner] != ["bytes", "crc32c"]:
        return False
    endian = (inner[0].get("configuration") or {}).get("endian", "little")
    return endian == "little" or np.dtype(meta.get("data_type", "uint8")).itemsize == 1


class DirectLayout:
    """The byte layout of one array's inner chunks: rows of ``row_nbytes`` bytes, then the chunk's crc32c."""

    def __init__(self, chunk_shape: list[int], dtype: str) -> None:
        self.dtype = np.dtype(dtype).newbyteorder("<")
        self.chunk_shape = tuple(chunk_shape)
        self.row_shape = self.chunk_shape[1:]
        self.row_nbytes = row_nbytes(self.row_shape, self.dtype)
        self.nbytes = self.row_nbytes * self.chunk_shape[0]

    def check_chunk(self, data: memoryview) -> str | None:
        """What is wrong with one stored inner chunk (its size, its crc32c), or ``None`` when it is sound."""
        if len(data) != self.nbytes + CRC_BYTES:
            return f"is {len(data)} bytes where its shape needs {self.nbytes + CRC_BYTES}"
        stored = int.from_bytes(data[self.nbytes :], "little")
        if google_crc32c.value(np.frombuffer(data, np.uint8, self.nbytes)) != stored:  # it takes no memoryview
            return "fails its crc32c checksum"
        return None

    def fill(self, out: np.ndarray, data: memoryview) -> np.ndarray:
        """``out`` (a chunk-shaped buffer) holding the values of ``data``, the chunk's checked stored bytes."""
        out.reshape(-1).view(np.uint8)[:] = np.frombuffer(data, dtype=np.uint8, count=self.nbytes)
        return out

    def read_chunk(self, fd: int, span: ChunkSpan, out: np.ndarray) -> bool:
        """Read the chunk at ``span`` of the open file ``fd`` into ``out`` with one ``pread``; whether its bytes
        (values and crc32c) hash to ``span.digest``, the digest of the verified bytes."""
        crc = bytearray(CRC_BYTES)
        values = out.reshape(-1).view(np.uint8).data
        got = os.preadv(fd, [values, crc], span.offset)
        hasher = xxhash.xxh3_128(values)
        hasher.update(crc)
        return got == span.nbytes and hasher.hexdigest() == span.digest

    def row_digests(self, data: memoryview) -> np.ndarray:
        """XXH3-128 of every row of one checked chunk, ``(rows, 16)`` uint8."""
        rows = (data[i : i + self.row_nbytes] for i in range(0, self.nbytes, self.row_nbytes))
        return np.frombuffer(b"".join(map(xxhash.xxh3_128_digest, rows)), dtype=np.uint8).reshape(-1, ROW_DIGEST_BYTES)

    def read_rows(self, fd: int, offsets: np.ndarray, digests: np.ndarray) -> np.ndarray | int:
        """Rows at byte ``offsets`` of the open file ``fd``, ``(len(offsets), *row_shape)``, when every one hashes
        to its row of ``digests``; else the position of the first that does not (the file changed since it was
        verified)."""
        parts = list(map(os.pread, repeat(fd), repeat(self.row_nbytes), offsets.tolist()))
        got = b"".join(map(xxhash.xxh3_128_digest, parts))
        if got != digests.tobytes():
            found = np.frombuffer(got, dtype=np.uint8).reshape(digests.shape)
            return int(np.nonzero((found != digests).any(axis=1))[0][0])
        return np.frombuffer(b"".join(parts), dtype=self.dtype).reshape(len(parts), *self.row_shape)


class OpenFiles:
    """Read-only descriptors of recently read shard files, per process (a descriptor is not inherited usefully
    across a fork or a pickle), at most :data:`MAX_OPEN_FILES`. A file replaced after it was opened keeps being
    read through the old descriptor: those are the verified bytes, and the row digests say so."""

    def __init__(self) -> None:
        self._fds: OrderedDict[str, int] = OrderedDict()
        self._pid = os.getpid()

    def fd(self, path: str) -> int:
        """A descriptor of ``path``; ``FileNotFoundError`` when it does not exist."""
        if self._pid != os.getpid():
            self._fds, self._pid = OrderedDict(), os.getpid()
        if path in self._fds:
            self._fds.move_to_end(path)
            return self._fds[path]
        fd = os.open(path, os.O_RDONLY)
        self._fds[path] = fd
        if len(self._fds) > MAX_OPEN_FILES:
            os.close(self._fds.popitem(last=False)[1])
        return fd

    def forget(self, path: str) -> None:
        """Close ``path``'s descriptor (its bytes were not the verified ones): the next read opens it again."""
        if (fd := self._fds.pop(path, None)) is not None:
            os.close(fd)

    def close(self) -> None:
        if self._pid == os.getpid():
            for fd in self._fds.values():
                os.close(fd)
        self._fds.clear()

    def __del__(self) -> None:
        self.close()
