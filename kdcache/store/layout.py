"""Where arrays live in a store and how they are chunked, sharded and encoded (DESIGN.md §2)."""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from kdcache.names import Compressor, check_safe_name

FORMAT_VERSION = 3
MANIFEST_KEY = "kdcache.manifest.json"
COMMITS_PREFIX = ".kdcache/commits"
TEACHERS_PREFIX = "teachers/"
SAMPLE_INDEX = "samples/index"  # (N,) int64: each row's sample index in the dataset
SAMPLE_LABEL = "samples/label"  # (N, ...) int64: each sample's label, where the dataset has labels
VIEW_PARAMS = "views/params"  # (N, V, P) float32: the numbers each augmented view was drawn with (samples owner)
SAMPLE_DIGEST = "samples/digest"  # (N, 16) uint8: XXH3-128 of each sample's source content (BLAKE2b-128 in format 2)
VIEW_DIGEST = "samples/view_digest"  # (N, V, 16) uint8: XXH3-128 of each view's model input (format 3)

# Codecs a kdcache store may use; anything else in an array's metadata is refused when the store is opened.
ALLOWED_CODECS = frozenset({"sharding_indexed", "bytes", "crc32c", "blosc", "zstd", "transpose"})

TARGET_CHUNK_BYTES = 512 * 1024  # inner chunk = read unit: large enough that zarr's per-call cost is amortised
TARGET_SHARD_BYTES = 32 * 1024 * 1024  # shard = write unit (PERFORMANCE.md: 16k samples of 1000-class fp16 logits)
MIN_SHARD_SAMPLES, MAX_SHARD_SAMPLES = 64, 65536


class Owner(str):
    """Who commits shards of a store: the sample arrays (``samples``) or one teacher (``teachers/<name>``).

    It is the manifest's commit-record ``owner`` string itself (a ``str``), so records, dict keys and messages read
    and write exactly the bytes they did; the type says where an owner is meant rather than any string, and the
    constructors are the one place the ``teachers/`` prefix is spelled.
    """

    __slots__ = ()

    @classmethod
    def samples(cls) -> Owner:
        """The owner of the per-sample arrays (``samples/...``, ``views/params``)."""
        return cls("samples")

    @classmethod
    def teacher(cls, name: str) -> Owner:
        """The owner of teacher ``name``'s target arrays (a safe name: it becomes a path component)."""
        return cls(TEACHERS_PREFIX + check_safe_name(name, what="teacher"))

    @classmethod
    def listed(cls, name: str) -> Owner:
        """The owner of a teacher a manifest lists under ``name``, taken as written: a manifest's records are
        checked as records (:mod:`kdcache.store.records`), so an odd name is reported there, not refused here."""
        return cls(TEACHERS_PREFIX + name)

    @property
    def path(self) -> str:
        """The owner's folder in the store (``samples`` or ``teachers/<name>``)."""
        return str(self)

    @property
    def teacher_name(self) -> str | None:
        """The teacher's name; None for the samples owner."""
        return self.removeprefix(TEACHERS_PREFIX) if self.startswith(TEACHERS_PREFIX) else None


SAMPLES_OWNER = Owner.samples()


def teacher_path(teacher: str, array: str) -> str:
    """Array path of a teacher's target array, e.g. ``teachers/resnet50/logits``."""
    return f"{Owner.teacher(teacher).path}/{check_safe_name(array, what='target array')}"


def shard_key(path: str, index: int, ndim: int) -> str:
    """The key of shard ``index`` of an ``ndim``-dimensional array (sharded along axis 0 only, default chunk keys)."""
    return f"{path}/c/" + "/".join([str(index)] + ["0"] * (ndim - 1))


def owner_of_teacher(teacher: str) -> Owner:
    """:meth:`Owner.teacher` under the name callers outside the store layer use today."""
    return Owner.teacher(teacher)


def row_nbytes(shape: tuple[int, ...], dtype: Any) -> int:
    """Bytes of one row of ``shape`` in ``dtype`` (a sample, a chunk): every array size kdcache computes."""
    return int(np.prod(shape, dtype=np.int64)) * np.dtype(dtype).itemsize


@dataclass(frozen=True)
class ArraySpec:
    """One array to create: its path, the shape and dtype of one sample, and how it is chunked and compressed.

    ``views`` adds axis 1 (one entry per cached view); ``None`` for per-sample arrays such as ``samples/index``.
    ``attributes`` are written into the array's ``zarr.json`` (under ``kdcache``) so plain zarr readers can tell
    what it holds: its axes, the dtype its values decode to, the target kind and parameters.
    """

    path: str
    sample_shape: tuple[int, ...]
    dtype: str
    compressor: Compressor = "none"
    views: int | None = None
    attributes: dict[str, Any] = field(default_factory=dict, compare=False)

    @property
    def bytes_per_sample(self) -> int:
        return row_nbytes(self.sample_shape, self.dtype) * (self.views or 1)

    def shape(self, num_samples: int) -> tuple[int, ...]:
        head = (num_samples,) if self.views is None else (num_samples, self.views)
        return head + self.sample_shape

    def chunk_samples(self, shard_samples: int) -> int:
        """Samples per inner chunk: ~512 KB, a power of two that divides the shard, or the whole shard when that is
        smaller (a one-shard store's shard need not be a power of two: see :func:`plan_shard_samples`)."""
        target = _chunk_target(self.bytes_per_sample)
        return shard_samples if target >= shard_samples else math.gcd(shard_samples, target)


@dataclass(frozen=True)
class TargetLayout:
    """How one target is stored: its kind, its parameters, the shape of one extracted value and its arrays by name
    relative to the teacher."""

    kind: str
    params: dict[str, Any]
    arrays: dict[str, ArraySpec]
    value_shape: tuple[int, ...]


def layouts_shard_samples(layouts: Iterable[TargetLayout], num_samples: int) -> int:
    """Samples per shard of a new store of ``num_samples`` for the targets ``layouts``: :func:`plan_shard_samples`
    of their arrays alone (stage one creates stores with it; ``kdcache plan`` reports what it will choose)."""
    widths = [spec.bytes_per_sample for layout in layouts for spec in layout.arrays.values()]
    return plan_shard_samples(widths, num_samples)


def plan_shard_samples(bytes_per_sample: list[int], num_samples: int) -> int:
    """Samples per shard for a new store: ~32 MB of the widest array, a power of two between 64 and 65,536.

    A store that fits in one such shard gets one shard no larger than its data instead: the sample count rounded up
    to the widest array's inner chunk, or to a multiple of 64 where that chunk would hold the whole store (a
    620-sample store of fp16 logits is one 640-sample shard, not 1,024). Every array's inner chunks still divide it
    (:meth:`ArraySpec.chunk_samples`), and a store keeps its recorded shard size for every later writer.
    """
    widest = max(bytes_per_sample, default=1)
    by_bytes = _pow2_floor(max(1, TARGET_SHARD_BYTES // max(1, widest)))
    by_bytes = max(MIN_SHARD_SAMPLES, min(by_bytes, MAX_SHARD_SAMPLES))
    if num_samples >= by_bytes:
        return by_bytes
    chunk = _chunk_target(widest)
    step = chunk if chunk < num_samples else MIN_SHARD_SAMPLES
    return max(MIN_SHARD_SAMPLES, -(-num_samples // step) * step)


def shard_count(num_samples: int, shard_samples: int) -> int:
    """How many shards of ``shard_samples`` hold ``num_samples`` samples, the last maybe partial (also inner chunks
    of a shard or an array: pass the chunk's samples)."""
    return -(-num_samples // shard_samples)


def shard_range(index: int, num_samples: int, shard_samples: int) -> tuple[int, int]:
    """Sample range ``[start, stop)`` of shard ``index``: the one place a shard's rows are computed."""
    start = index * shard_samples
    return start, min(start + shard_samples, num_samples)


def shard_ranges(num_samples: int, shard_samples: int) -> list[tuple[int, int]]:
    """Sample ranges ``[start, stop)`` of every shard, in order."""
    return [shard_range(i, num_samples, shard_samples) for i in range(shard_count(num_samples, shard_samples))]


def _chunk_target(bytes_per_sample: int) -> int:
    """Samples per ~512 KB inner chunk of an array of ``bytes_per_sample``: a power of two."""
    return _pow2_ceil(max(1, TARGET_CHUNK_BYTES // max(1, bytes_per_sample)))


def _pow2_ceil(x: int) -> int:
    return 1 << max(0, int(x - 1).bit_length())


def _pow2_floor(x: int) -> int:
    return 1 << max(0, int(x).bit_length() - 1)
