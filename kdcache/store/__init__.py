"""The on-disk store: the only package that imports zarr; it knows arrays and manifests, not networks or datasets.

See docs/store-format.md. Writing: :class:`StoreBuilder` (commit whole shards, publish the manifest last) under a
:class:`StoreLock`. Reading: :func:`open_store` gives a validated :class:`StoreReader`; :meth:`StoreReader.require` checks in one
call that the store fits a run (:class:`Requirements`); :class:`ArrayReader` reads rows a batch at a time.
"""

from kdcache.store.arrays import ArrayReader
from kdcache.store.layout import (
    FORMAT_VERSION,
    SAMPLE_DIGEST,
    SAMPLES_OWNER,
    VIEW_DIGEST,
    VIEW_PARAMS,
    ArraySpec,
    plan_shard_samples,
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
    "VIEW_DIGEST",
    "VIEW_PARAMS",
    "ArrayReader",
    "ArraySpec",
    "StoreReader",
    "Manifest",
    "Requirements",
    "ShardCache",
    "StoreBuilder",
    "StoreLocation",
    "StoreLock",
    "TargetLayout",
    "io_errors",
    "library_versions",
    "open_store",
    "plan_shard_samples",
    "read_manifest",
    "scrub",
    "shard_ranges",
    "teacher_path",
]
