"""Where arrays live in a store and how they are chunked, sharded and encoded (DESIGN.md §2)."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from kdcache.names import Compressor, check_safe_name

FORMAT_VERSION = 3
MANIFEST_KEY = "kdcache.manifest.json"
COMMITS_PREFIX = ".kdcache/commits"
SAMPLES_OWNER = "samples"
VIEW_PARAMS = "views/params"  # (N, V, P) float32: the numbers each augmented view was drawn with (samples owner)
SAMPLE_DIGEST = "samples/digest"  # (N, 16) uint8: XXH3-128 of each sample's source content (BLAKE2b-128 in format 2)
VIEW_DIGEST = "samples/view_digest"  # (N, V, 16) uint8: XXH3-128 of each view's model input (format 3)

# Codecs a kdcache store may use; anything else in an array's metadata is refused when the store is opened.
ALLOWED_CODECS = frozenset({"sharding_indexed", "bytes", "crc32c", "blosc", "zstd", "transpose"})

TARGET_CHUNK_BYTES = 512 * 1024  # inner chunk = read unit: large enough that zarr's per-call cost is amortised
TARGET_SHARD_BYTES = 32 * 1024 * 1024  # shard = write unit (PERFORMANCE.md: 16k samples of 1000-class fp16 logits)
MIN_SHARD_SAMPLES, MAX_SHARD_SAMPLES = 64, 65536


def teacher_path(teacher: str, array: str) -> str:
    """Array path of a teacher's target array, e.g. ``teachers/resnet50/logits``."""
    return f"teachers/{check_safe_name(teacher, what='teacher')}/{check_safe_name(array, what='target array')}"


def shard_key(path: str, index: int, ndim: int) -> str:
    """The key of shard ``index`` of an ``ndim``-dimensional array (sharded along axis 0 only, default chunk keys)."""
    return f"{path}/c/" + "/".join([str(index)] + ["0"] * (ndim - 1))


def owner_of_teacher(teacher: str) -> str:
    return f"teachers/{check_safe_name(teacher, what='teacher')}"


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
        return int(np.prod(self.sample_shape, dtype=np.int64)) * np.dtype(self.dtype).itemsize * (self.views or 1)

    def shape(self, num_samples: int) -> tuple[int, ...]:
        head = (num_samples,) if self.views is None else (num_samples, self.views)
        return head + self.sample_shape

    def chunk_samples(self, shard_samples: int) -> int:
        """Samples per inner chunk: ~512 KB, a power of two that divides the shard, or the whole shard when that is
        smaller (a one-shard store's shard need not be a power of two: see :func:`plan_shard_samples`)."""
        target = _chunk_target(self.bytes_per_sample)
        return shard_samples if target >= shard_samples else math.gcd(shard_samples, target)


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


def shard_ranges(num_samples: int, shard_samples: int) -> list[tuple[int, int]]:
    """Sample ranges ``[start, stop)`` of every shard, in order."""
    return [(lo, min(lo + shard_samples, num_samples)) for lo in range(0, num_samples, shard_samples)]


def _chunk_target(bytes_per_sample: int) -> int:
    """Samples per ~512 KB inner chunk of an array of ``bytes_per_sample``: a power of two."""
    return _pow2_ceil(max(1, TARGET_CHUNK_BYTES // max(1, bytes_per_sample)))


def _pow2_ceil(x: int) -> int:
    return 1 << max(0, int(x - 1).bit_length())


def _pow2_floor(x: int) -> int:
    return 1 << max(0, int(x).bit_length() - 1)
