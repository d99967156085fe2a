"""The on-disk store: the only package that imports zarr; it knows arrays and manifests, not networks or datasets.

See docs/store-format.md. Writing: :class:`StoreBuilder` (commit whole shards, publish the manifest last) under a
:class:`StoreLock`. Reading: :func:`open_store` gives a validated :class:`StoreReader`; :meth:`StoreReader.require` checks in one
call that the store fits a run (:class:`Requirements`); :class:`ArrayReader` reads rows a batch at a time.
"""

from kdcache.registry import moved_names
from kdcache.store.arrays import ArrayReader
from kdcache.store.layout import (
    FORMAT_VERSION,
    SAMPLE_DIGEST,
    SAMPLE_INDEX,
    SAMPLE_LABEL,
    SAMPLES_OWNER,
    VIEW_DIGEST,
    VIEW_PARAMS,
    ArraySpec,
    Owner,
    layouts_shard_samples,
    plan_shard_samples,
    row_nbytes,
    shard_count,
    shard_range,
    shard_ranges,
    teacher_path,
)
from kdcache.store.location import StoreLocation, io_errors
from kdcache.store.lock import StoreLock
from kdcache.store.manifest import Manifest, library_versions, read_manifest
from kdcache.store.reader import StoreReader, open_store, scrub
from kdcache.store.requirements import Requirements
from kdcache.store.shardcache import ShardCache
from kdcache.store.writer import StoreBuilder, TargetLayout

__all__ = [
    "FORMAT_VERSION",
    "SAMPLES_OWNER",
    "SAMPLE_DIGEST",
    "SAMPLE_INDEX",
    "SAMPLE_LABEL",
    "VIEW_DIGEST",
    "VIEW_PARAMS",
    "ArrayReader",
    "ArraySpec",
    "Manifest",
    "Owner",
    "Requirements",
    "ShardCache",
    "StoreBuilder",
    "StoreLocation",
    "StoreLock",
    "StoreReader",
    "TargetLayout",
    "io_errors",
    "layouts_shard_samples",
    "library_versions",
    "open_store",
    "plan_shard_samples",
    "read_manifest",
    "row_nbytes",
    "scrub",
    "shard_count",
    "shard_range",
    "shard_ranges",
    "teacher_path",
]

__getattr__ = moved_names(__name__, {"Cache": "kdcache.store:StoreReader", "open_cache": "kdcache.store:open_store"})
