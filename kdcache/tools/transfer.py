"""HDF5 export and import of a store, for teams that do not use zarr (``kdcache export`` / ``kdcache import``).

The HDF5 file holds every array of the store at the same path (``samples/index``, ``teachers/<name>/logits``, ...)
with the same shape and stored dtype (bfloat16 stays its raw ``uint16`` bits; each teacher array's ``kdcache.target``
attribute names the kind and parameters), and the commit manifest as the root attribute ``kdcache.manifest``
(sorted-key JSON, byte for byte the store's ``kdcache.manifest.json``).

Export reads shard by shard, each verified against its SHA-256 first, so a store larger than memory exports and a
damaged one is refused. Import rebuilds the store through :class:`StoreBuilder` (same layout, codecs, commits), so it
is a normal kdcache store: it opens and verifies, and with the same zarr version its shard files, digests and
manifest equal the exported store's.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from tqdm.auto import tqdm

from kdcache.atomic import atomic_path
from kdcache.errors import DestinationExistsError, StoreFormatError, StoreIncompleteError
from kdcache.store import StoreReader, open_store
from kdcache.store.layout import FORMAT_VERSION, SAMPLES_OWNER, ArraySpec, Owner
from kdcache.store.location import StoreLocation
from kdcache.store.manifest import ArrayRecord, Manifest, manifest_bytes, parse_manifest
from kdcache.store.writer import StoreBuilder, TargetLayout, array_record

if TYPE_CHECKING:
    import h5py

MANIFEST_ATTR = "kdcache.manifest"
TARGET_ATTR = "kdcache.target"


def export_hdf5(store: str, path: str | Path, *, progress: bool = True) -> Path:
    """Write the complete store at ``store`` to a new HDF5 file ``path`` (written to a temp file, then renamed).

    >>> export_hdf5("runs/digits_kd/cache/train.zarr", "train.h5")  # doctest: +SKIP
    """
    import h5py

    cache = open_store(store)
    if cache.manifest.status != "complete":
        raise StoreIncompleteError(
            f"store {cache.url!r} is {cache.manifest.status}; only complete stores are exported. Finish it with "
            "`kdcache precompute` (it resumes) and export again"
        )
    path = Path(path)
    if path.exists():
        raise DestinationExistsError(
            f"{str(path)!r} already exists; export writes a new file. Remove it or pick another"
        )
    bar = tqdm(total=_shard_count(cache), unit="shard", desc="export", disable=not progress)
    try:
        with atomic_path(path) as tmp, h5py.File(tmp, "w") as f:
            f.attrs[MANIFEST_ATTR] = manifest_bytes(cache.manifest).decode()
            _write_arrays(f, cache, bar)
    finally:
        bar.close()
    return path


def _write_arrays(f: h5py.File, cache: StoreReader, bar: tqdm) -> None:
    params = {
        a.path: {"kind": t.kind, "params": t.params}
        for teacher in cache.manifest.teachers.values()
        for t in teacher.targets.values()
        for a in t.arrays.values()
    }
    for owner, records in cache.owner_arrays().items():
        for record in records.values():
            chunks = tuple(max(1, min(c, s)) for c, s in zip(record.chunks, record.shape, strict=True))
            dataset = f.create_dataset(record.path, shape=tuple(record.shape), dtype=record.dtype, chunks=chunks)
            if record.path in params:
                dataset.attrs[TARGET_ATTR] = json.dumps(params[record.path], sort_keys=True)
            reader = cache.array_reader(record, owner, in_memory=False)
            for index in range(reader.num_shards):
                lo, hi = reader.shard_range(index)
                dataset[lo:hi] = reader.read_shard(index)
                bar.update()


def import_hdf5(path: str | Path, store: str, *, progress: bool = True) -> StoreReader:
    """Build a new store at ``store`` from an HDF5 file written by :func:`export_hdf5`; returns it opened.

    Every array is checked against the manifest before anything is written, so a bad file leaves no store behind.

    >>> import_hdf5("train.h5", "s3://team-bucket/digits/train.zarr")  # doctest: +SKIP
    """
    import h5py

    location = StoreLocation(store)
    if location.exists():
        raise DestinationExistsError(
            f"store {location.url!r} already exists; import builds a new store. Remove it or pick another location"
        )
    with h5py.File(path, "r") as f:
        manifest = _read_manifest(f, str(path))
        _require_arrays(f, manifest, str(path))
        builder = _declare(location, manifest)
        commits = [(SAMPLES_OWNER, manifest.samples.shards)]
        commits += [(Owner.listed(name), t.shards) for name, t in manifest.teachers.items()]
        with tqdm(total=sum(len(c) for _, c in commits), unit="shard", desc="import", disable=not progress) as bar:
            for owner, shards in commits:
                for commit in shards:
                    data = {p: np.asarray(f[p][commit.start : commit.stop]) for p in commit.files}
                    builder.commit(owner, commit.index, data, commit.stats)
                    bar.update()
                builder.finalize(owner)
    return open_store(store)


def _read_manifest(f: h5py.File, source: str) -> Manifest:
    raw = f.attrs.get(MANIFEST_ATTR)
    if raw is None:
        raise StoreFormatError(
            f"{source!r} is not a kdcache export: it has no {MANIFEST_ATTR!r} attribute (found attributes "
            f"{sorted(f.attrs)}). Make the file with `kdcache export STORE FILE.h5`"
        )
    manifest = parse_manifest(raw, source=f"HDF5 export {source!r}", key=f"{source}:{MANIFEST_ATTR}")
    if manifest.format_version != FORMAT_VERSION or manifest.status != "complete":
        raise StoreFormatError(f"{source!r} holds a {manifest.status} store; only complete stores are imported")
    return manifest


def _require_arrays(f: h5py.File, manifest: Manifest, source: str) -> None:
    """Each array the manifest lists exists in the file with the recorded shape and dtype, and has a layout this
    kdcache rebuilds exactly."""
    for record, spec in _specs(manifest):
        found = f.get(record.path)
        shape, dtype = (None, None) if found is None else (list(found.shape), str(found.dtype))
        if (shape, dtype) != (record.shape, record.dtype):
            raise StoreFormatError(
                f"{source!r}: array {record.path} should have shape {record.shape} and dtype {record.dtype} as the "
                f"manifest says, found {'no such array' if found is None else f'{shape} {dtype}'}. "
                "Export the store again with `kdcache export`"
            )
        rebuilt = array_record(spec, manifest.num_samples, manifest.shard_samples)
        if rebuilt != record:
            raise StoreFormatError(
                f"{source!r}: array {record.path} is laid out as {record.model_dump()}, but this kdcache would create "
                f"{rebuilt.model_dump()}. Import it with the kdcache version that exported it"
            )


def _specs(manifest: Manifest) -> list[tuple[ArrayRecord, ArraySpec]]:
    """Every array record with the :class:`ArraySpec` that creates it (teacher arrays have a view axis)."""
    pairs = [(r, _spec(manifest, r, views=False)) for r in manifest.samples.arrays.values()]
    pairs += [
        (a, _spec(manifest, a, views=True))
        for teacher in manifest.teachers.values()
        for target in teacher.targets.values()
        for a in target.arrays.values()
    ]
    return pairs


def _spec(manifest: Manifest, record: ArrayRecord, *, views: bool) -> ArraySpec:
    """The spec that recreates ``record``, with the attributes its pinned ``zarr.json`` carries."""
    shape, compressor = record.shape, record.checked_compressor()
    pinned = manifest.metadata.get(f"{record.path}/zarr.json", {})
    attributes = (pinned.get("attributes") or {}).get("kdcache", {})
    if views:
        return ArraySpec(record.path, tuple(shape[2:]), record.dtype, compressor, views=shape[1], attributes=attributes)
    return ArraySpec(record.path, tuple(shape[1:]), record.dtype, compressor, attributes=attributes)


def _declare(location: StoreLocation, manifest: Manifest) -> StoreBuilder:
    """Create the store with the manifest's samples, views, dataset and teachers (arrays empty, status building)."""
    builder = StoreBuilder.create_or_open(
        location,
        num_samples=manifest.num_samples,
        shard_samples=manifest.shard_samples,
        dataset=manifest.dataset,
        views=manifest.views,
        sample_arrays=[_spec(manifest, r, views=False) for r in manifest.samples.arrays.values()],
        library=manifest.library,
    )
    for name, teacher in manifest.teachers.items():
        layouts = {
            target: TargetLayout(
                kind=record.kind,
                params=record.params,
                arrays={rel: _spec(manifest, a, views=True) for rel, a in record.arrays.items()},
                value_shape=tuple(record.value_shape or ()),
            )
            for target, record in teacher.targets.items()
        }
        builder.add_teacher(name, teacher.fingerprint, layouts)
    return builder


def _shard_count(cache: StoreReader) -> int:
    return sum(len(records) for records in cache.owner_arrays().values()) * cache.manifest.num_shards()
