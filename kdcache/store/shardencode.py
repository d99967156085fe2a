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
from typing import Any

import google_crc32c
import numpy as np
from numcodecs import Blosc

from kdcache.store.layout import row_nbytes, shard_count, shard_range

EMPTY = np.uint64(2**64 - 1)  # index entry of an inner chunk that holds no byte
LITTLE = {"name": "bytes", "configuration": {"endian": "little"}}
CRC32C = {"name": "crc32c"}
FILL = {"NaN": np.nan, 0: 0}  # the fill values kdcache's arrays have (floats: NaN, integers: 0)


@dataclass(frozen=True)
class ShardEncoder:
    """How the shards of one array are laid out: samples per shard and per inner chunk, the array's length, the
    dtype, the shape after axis 0, the Blosc codec's configuration (``None``: uncompressed) and the fill value."""

    num_samples: int
    shard_samples: int
    chunk_samples: int
    dtype: np.dtype
    tail: tuple[int, ...]
    blosc: dict[str, Any] | None
    fill: float | int

    @classmethod
    def from_metadata(cls, meta: dict[str, Any]) -> ShardEncoder:
        """The encoder of the array whose ``zarr.json`` is ``meta``, refused (:class:`ValueError`, saying what
        differs) unless the array is laid out as kdcache creates them: sharded along axis 0 only, inner codecs
        ``bytes`` (+ ``blosc``) + ``crc32c``, index ``bytes`` + ``crc32c`` at the end, fill value NaN or 0."""
        shape, shard = meta["shape"], meta["chunk_grid"]["configuration"]["chunk_shape"]
        (sharding,) = meta["codecs"]
        config = sharding["configuration"]
        chunk, inner = config["chunk_shape"], config["codecs"]
        dtype = np.dtype(meta["data_type"])
        blosc = inner[1] if len(inner) == 3 and inner[1]["name"] == "blosc" else None
        layout = [
            ("sharding", sharding["name"], "sharding_indexed"),
            ("sharded along axis 0", (shard[1:], chunk[1:]), (shape[1:], shape[1:])),
            ("inner chunks dividing the shard", shard[0] % chunk[0], 0),
            ("inner codecs", [inner[0]["name"], inner[-1]], ["bytes", CRC32C]),
            ("byte order", inner[0].get("configuration", LITTLE["configuration"]), LITTLE["configuration"]),
            ("compression", len(inner), 3 if blosc else 2),
            (
                "blosc block size and shuffle",
                blosc
                and (
                    blosc["configuration"]["blocksize"],
                    blosc["configuration"]["shuffle"],
                    blosc["configuration"]["typesize"],
                ),
                blosc and (0, "shuffle", dtype.itemsize),
            ),
            ("index codecs", config["index_codecs"], [LITTLE, CRC32C]),
            ("index location", config["index_location"], "end"),
            ("fill value", meta["fill_value"], "NaN" if np.issubdtype(dtype, np.floating) else 0),
        ]
        for what, found, expected in layout:
            if found != expected:
                raise ValueError(f"{what}: {found!r}, where kdcache writes {expected!r}")
        return cls(
            shape[0],
            shard[0],
            chunk[0],
            dtype,
            tuple(shape[1:]),
            blosc and blosc["configuration"],
            FILL[meta["fill_value"]],
        )

    @cached_property
    def _blosc(self) -> Blosc | None:
        if self.blosc is None:
            return None
        keys = ("cname", "clevel", "blocksize", "typesize")
        return Blosc.from_config({**{k: self.blosc[k] for k in keys}, "shuffle": Blosc.SHUFFLE})

    def encode(self, index: int, rows: np.ndarray) -> memoryview:
        """The bytes of shard ``index`` holding ``rows`` (every row of its range, in the array's dtype)."""
        start, stop = shard_range(index, self.num_samples, self.shard_samples)
        if rows.shape != (stop - start, *self.tail) or rows.dtype != self.dtype:
            raise ValueError(
                f"shard {index} needs rows {(stop - start, *self.tail)} of {self.dtype}, got "
                f"{rows.shape} of {rows.dtype}"
            )
        written = shard_count(stop - start, self.chunk_samples)  # chunks holding a sample of the array
        if self._blosc is None:
            return self._plain(rows, written)
        return self._compressed(rows, written, self._blosc)

    def _chunk(self, rows: np.ndarray, i: int, out: np.ndarray) -> None:
        """Inner chunk ``i`` of ``rows`` into ``out`` (its rows' shape): the rows, then the fill value past the end."""
        part = rows[i * self.chunk_samples : (i + 1) * self.chunk_samples]
        out[: len(part)] = part
        out[len(part) :] = self.fill

    def _plain(self, rows: np.ndarray, written: int) -> memoryview:
        """Uncompressed chunks, written once into the file's buffer: each chunk's bytes, then their crc32c."""
        width = row_nbytes((self.chunk_samples, *self.tail), self.dtype)
        out = self._file(written * (width + 4))
        body = out[: written * (width + 4)].reshape(written, width + 4)
        little = self.dtype.newbyteorder("<")
        for i in range(written):
            self._chunk(rows, i, body[i, :width].view(little).reshape(self.chunk_samples, *self.tail))
            body[i, width:] = np.array([google_crc32c.value(body[i, :width])], dtype="<u4").view(np.uint8)
        return self._finish(out, np.full(written, width + 4, dtype=np.uint64))

    def _compressed(self, rows: np.ndarray, written: int, codec: Blosc) -> memoryview:
        """Blosc-compressed chunks (one at a time through a scratch chunk), each followed by its crc32c."""
        scratch = np.empty((self.chunk_samples, *self.tail), dtype=self.dtype.newbyteorder("<"))
        parts = []
        for i in range(written):
            self._chunk(rows, i, scratch)
            packed = codec.encode(scratch.reshape(-1).view(np.uint8))
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
