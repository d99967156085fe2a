"""The on-disk store: the only package that imports zarr. See docs/store-format.md."""

from kdcache.store.layout import FORMAT_VERSION, ArraySpec, check_name, plan_shard_samples, shard_ranges, teacher_path
from kdcache.store.location import StoreLocation
from kdcache.store.manifest import Manifest, read_manifest
from kdcache.store.reader import ArrayReader, Cache, open_cache, scrub
from kdcache.store.writer import StoreBuilder, TargetLayout

__all__ = [
    "FORMAT_VERSION",
    "ArrayReader",
    "ArraySpec",
    "Cache",
    "Manifest",
    "StoreBuilder",
    "StoreLocation",
    "TargetLayout",
    "check_name",
    "open_cache",
    "plan_shard_samples",
    "read_manifest",
    "scrub",
    "shard_ranges",
    "teacher_path",
]
