"""Building a store: create or validate its layout, commit whole shards, publish the manifest last.

The unit of work is one shard range of one owner (``samples`` or ``teachers/<name>``): :meth:`StoreBuilder.commit`
writes every array of the owner for that range in shard-aligned calls (zarr rewrites a whole shard on any partial
write, so unaligned writes are refused), digests the shard files and records them. The same call serves the
single-process writer thread and dask tasks; it is idempotent, so a task that runs twice does no harm.
"""

from __future__ import annotations

import hashlib
import json
import logging
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import zarr
from zarr.codecs import BloscCodec, Crc32cCodec

from kdcache.atomic import TEMP_SUFFIX
from kdcache.errors import StoreFormatError, StoreMismatchError, say
from kdcache.fingerprint import describe_difference
from kdcache.store.integrity import read_document
from kdcache.store.layout import MANIFEST_KEY, SAMPLES_OWNER, ArraySpec, Owner, TargetLayout, shard_key, shard_range
from kdcache.store.location import StoreLocation, io_errors
from kdcache.store.manifest import (
    ArrayRecord,
    FileDigest,
    Manifest,
    SamplesRecord,
    ShardCommit,
    TargetRecord,
    TeacherRecord,
    read_commits,
    read_manifest,
    write_commit,
    write_manifest,
)
from kdcache.store.merge import merge_published
from kdcache.store.shardencode import ShardEncoder

log = logging.getLogger(__name__)


def compressors_for(spec: ArraySpec) -> list[Any]:
    """Inner-chunk codecs: the compressor, then crc32c so every stored byte is checksummed."""
    chosen = {
        "none": [],
        "lz4": [BloscCodec(cname="lz4", clevel=5, shuffle="shuffle")],
        "zstd": [BloscCodec(cname="zstd", clevel=1, shuffle="shuffle")],
    }[spec.compressor]
    return [*chosen, Crc32cCodec()]


def create_array(group: zarr.Group, spec: ArraySpec, num_samples: int, shard_samples: int) -> zarr.Array:
    """Create the array of ``spec`` in ``group`` as every kdcache store lays it out."""
    record = array_record(spec, num_samples, shard_samples)
    floating = np.issubdtype(np.dtype(spec.dtype), np.floating)
    return group.create_array(
        spec.path,
        shape=tuple(record.shape),
        chunks=tuple(record.chunks),
        shards=tuple(record.shards),
        dtype=spec.dtype,
        compressors=compressors_for(spec),
        fill_value=np.nan if floating else 0,  # NaN: a chunk that was never written cannot pass as data
        attributes={"kdcache": _sorted(spec.attributes)} if spec.attributes else None,
        overwrite=True,
    )


def expected_metadata(spec: ArraySpec, num_samples: int, shard_samples: int) -> dict[str, Any]:
    """The ``zarr.json`` document this kdcache writes for ``spec`` (made in a scratch directory, not in a store)."""
    with tempfile.TemporaryDirectory() as scratch:
        create_array(zarr.open_group(scratch, mode="w", zarr_format=3), spec, num_samples, shard_samples)
        return json.loads((Path(scratch) / spec.path / "zarr.json").read_text())


def array_record(spec: ArraySpec, num_samples: int, shard_samples: int) -> ArrayRecord:
    shape = spec.shape(num_samples)
    chunk = spec.chunk_samples(shard_samples)
    return ArrayRecord(
        path=spec.path,
        shape=list(shape),
        dtype=spec.dtype,
        chunks=[chunk, *shape[1:]],
        shards=[shard_samples, *shape[1:]],
        compressor=spec.compressor,
    )


class StoreBuilder:
    """Writes into one store. Create it with :meth:`create_or_open`; commit shards; :meth:`finalize` each owner."""

    def __init__(self, location: StoreLocation, manifest: Manifest) -> None:
        self.location = location
        self.manifest = manifest
        self._group: zarr.Group | None = None
        self._arrays: dict[str, zarr.Array] = {}
        self._encoders: dict[str, ShardEncoder] = {}

    # ---------------------------------------------------------------- layout
    @classmethod
    def create_or_open(
        cls,
        location: StoreLocation,
        *,
        num_samples: int,
        shard_samples: int,
        dataset: dict[str, Any],
        views: dict[str, Any],
        sample_arrays: list[ArraySpec],
        library: dict[str, str],
    ) -> StoreBuilder:
        """Open the store at ``location`` for writing, creating it if it does not exist.

        An existing store must describe the same dataset, views, sample count and shard size; otherwise nothing is
        touched and the error names both sides.
        """
        if location.exists(MANIFEST_KEY):
            manifest = read_manifest(location)
            _require_same(location, "dataset", manifest.dataset, dataset)
            _require_same(location, "views", manifest.views, views)
            if (manifest.num_samples, manifest.shard_samples) != (num_samples, shard_samples):
                raise StoreMismatchError(
                    f"store {location.url!r} holds {manifest.num_samples} samples in shards of "
                    f"{manifest.shard_samples}; this run has {num_samples} samples in shards of {shard_samples}. "
                    f"Use the store's shard size ({say('shard_samples=', 'cache.shard_samples')}) or write to a new store"
                )
            builder = cls(location, manifest)
            builder.remove_temporaries()
            return builder
        records = {s.path: array_record(s, num_samples, shard_samples) for s in sample_arrays}
        manifest = Manifest(
            num_samples=num_samples,
            shard_samples=shard_samples,
            dataset=dataset,
            views=views,
            samples=SamplesRecord(arrays=records),
            library=library,
        )
        builder = cls(location, manifest)
        builder._create_arrays(sample_arrays)
        builder.publish()
        return builder

    def add_teacher(self, name: str, fingerprint: dict[str, Any], targets: dict[str, TargetLayout]) -> None:
        """Declare a teacher and its targets; re-declaring an existing teacher must match it exactly."""
        n, shard = self.manifest.num_samples, self.manifest.shard_samples
        records = {
            target: TargetRecord(
                kind=layout.kind,
                params=layout.params,
                arrays={rel: array_record(spec, n, shard) for rel, spec in layout.arrays.items()},
                value_shape=list(layout.value_shape),
            )
            for target, layout in targets.items()
        }
        existing = self.manifest.teachers.get(name)
        if existing is not None:
            if existing.fingerprint.get("digest") != fingerprint.get("digest"):
                raise StoreMismatchError(
                    f"store {self.location.url!r} already holds teacher {name!r} made from a different teacher "
                    f"({describe_difference(fingerprint, existing.fingerprint)}). Give this teacher another name "
                    f"({say('teacher_name=', 'teacher.name')}) or write to a new store; the cached teacher is left untouched"
                )
            if existing.targets != records:
                raise StoreMismatchError(
                    f"store {self.location.url!r} holds teacher {name!r} with targets {sorted(existing.targets)} "
                    f"laid out differently from this run's {sorted(records)}. Use a new teacher name or a new store"
                )
            return
        self.manifest.teachers[name] = TeacherRecord(fingerprint=fingerprint, targets=records)
        self._create_arrays([spec for layout in targets.values() for spec in layout.arrays.values()])
        self.publish()

    def _create_arrays(self, specs: list[ArraySpec]) -> None:
        for spec in specs:
            create_array(self.group(), spec, self.manifest.num_samples, self.manifest.shard_samples)

    def add_sample_array(self, spec: ArraySpec) -> None:
        """Declare and create one more per-sample array (an upgrade adding what a newer format records)."""
        n, shard = self.manifest.num_samples, self.manifest.shard_samples
        arrays = {**self.manifest.samples.arrays, spec.path: array_record(spec, n, shard)}
        self.manifest.samples = self.manifest.samples.model_copy(update={"arrays": arrays})
        self._create_arrays([spec])

    def describe_array(self, path: str, attributes: dict[str, Any]) -> None:
        """Write an existing array's self-description into its ``zarr.json`` (its data is not touched)."""
        self.group()[path].attrs.update({"kdcache": _sorted(attributes)})

    def group(self) -> zarr.Group:
        if self._group is None:
            store = self.location.zarr_store(read_only=False)
            self._group = zarr.open_group(store, mode="a", zarr_format=3)
        return self._group

    def array(self, path: str) -> zarr.Array:
        """The array at ``path``, writing every chunk whatever its values: a chunk equal to the fill value (all-zero
        labels, all-NaN) is stored like any other, so every committed shard has a file to digest and read back."""
        if path not in self._arrays:
            found = self.group()[path]
            if not isinstance(found, zarr.Array):
                raise StoreFormatError(
                    f"{path!r} in store {self.location.url!r} is a group, where kdcache wrote an array"
                )
            self._arrays[path] = found.with_config({"write_empty_chunks": True})
        return self._arrays[path]

    def encoder(self, path: str) -> ShardEncoder:
        """The maker of array ``path``'s shard files (zarr's bytes for a whole-shard write, made directly), read
        from its ``zarr.json``: an array laid out otherwise than kdcache creates them is refused, not written."""
        if path not in self._encoders:
            try:
                self._encoders[path] = ShardEncoder.from_metadata(read_document(self.location, f"{path}/zarr.json"))
            except (ValueError, KeyError, TypeError) as exc:
                raise StoreFormatError(
                    f"store {self.location.url!r}: array {path} is laid out otherwise than kdcache writes its shards "
                    f"({exc}); write to a new store"
                ) from exc
        return self._encoders[path]

    def committed_rows(self, path: str, index: int) -> np.ndarray:
        """The rows of shard ``index`` of array ``path`` as committed (what a teacher joining the store compares its
        own facts of those samples with)."""
        start, stop = shard_range(index, self.manifest.num_samples, self.manifest.shard_samples)
        with io_errors(self.location, f"reading shard {index} of {path}"):
            return np.asarray(self.array(path)[start:stop])

    def remove_temporaries(self) -> None:
        """Delete temp files a killed writer left behind (ours and zarr's ``*.partial``); nothing reads them."""
        for key in self.location.list(""):
            if key.endswith(TEMP_SUFFIX):
                log.info("removing leftover temporary file %s", key)
                self.location.delete(key)

    # ---------------------------------------------------------------- commits
    def owner_arrays(self, owner: Owner) -> dict[str, ArrayRecord]:
        name = Owner(owner).teacher_name  # a caller may hand in the plain string
        if name is None:
            return self.manifest.samples.arrays
        teacher = self.manifest.teachers[name]
        return {rec.path: rec for t in teacher.targets.values() for rec in t.arrays.values()}

    def pending_shards(self, owner: Owner) -> list[int]:
        """Shard indices of ``owner`` without a valid commit record, in order."""
        done = self.valid_commits(owner)
        return [k for k in range(self.manifest.num_shards()) if k not in done]

    def valid_commits(self, owner: Owner) -> dict[int, ShardCommit]:
        """Commit records whose files still exist with the recorded sizes (a file lost since is rewritten)."""
        commits = read_commits(self.location, owner)
        return {
            k: c for k, c in commits.items() if all(self.location.size(f.key) == f.nbytes for f in c.files.values())
        }

    def commit(
        self, owner: Owner, index: int, data: dict[str, np.ndarray], stats: dict[str, float] | None = None
    ) -> ShardCommit:
        """Write shard ``index`` of every array of ``owner`` from ``data`` (path -> rows of that range), then record it."""
        start, stop = shard_range(index, self.manifest.num_samples, self.manifest.shard_samples)
        with io_errors(self.location, f"writing shard {index} (samples {start}..{stop - 1}) of {owner}"):
            return self._commit(owner, index, start, stop, data, stats)

    def _commit(
        self,
        owner: Owner,
        index: int,
        start: int,
        stop: int,
        data: dict[str, np.ndarray],
        stats: dict[str, float] | None,
    ) -> ShardCommit:
        arrays = self.owner_arrays(owner)
        if set(data) != set(arrays):
            raise ValueError(f"commit of {owner} shard {index} needs arrays {sorted(arrays)}, got {sorted(data)}")
        files: dict[str, FileDigest] = {}
        for path, values in data.items():
            record = arrays[path]
            expected = (stop - start, *record.shape[1:])
            if tuple(values.shape) != expected:
                raise ValueError(
                    f"{path}: shard {index} covers samples [{start}, {stop}) and needs shape {expected}, got "
                    f"{tuple(values.shape)}; writes must be whole shards"
                )
            raw = self.encoder(path).encode(index, np.asarray(values, dtype=record.dtype))
            key = shard_key(path, index, len(record.shape))
            self.location.write_bytes(key, raw, durable=False)
            if self.location.size(key) != len(raw):
                raise StoreFormatError(
                    f"{key}: {self.location.size(key)} bytes stored of the {len(raw)} written; "
                    "the storage lost part of the shard. Check it and run precompute again"
                )
            files[path] = FileDigest(key=key, nbytes=len(raw), sha256=hashlib.sha256(raw).hexdigest())
        commit = ShardCommit(owner=owner, index=index, start=start, stop=stop, files=files, stats=stats or {})
        write_commit(self.location, commit)
        return commit

    # ---------------------------------------------------------------- publishing
    def publish(self) -> None:
        """Write the group attributes that let plain zarr users see what the store is, then the manifest, sealed,
        with every ``zarr.json`` document pinned in it and another writer's published records merged in
        (:mod:`kdcache.store.merge`)."""
        with io_errors(self.location, "publishing the manifest"):
            self.manifest = merge_published(self.location, self.manifest)
            self._write_group_attributes()
            pinned = {key: read_document(self.location, key) for key in self.metadata_keys()}
            self.manifest = write_manifest(self.location, self.manifest.model_copy(update={"metadata": pinned}))

    def metadata_keys(self) -> list[str]:
        """Every ``zarr.json`` of the store: each array's and each group's up to the root."""
        paths = {path for records in self._all_arrays() for path in records}
        groups = {"/".join(p.split("/")[:depth]) for p in paths for depth in range(len(p.split("/")))}
        return sorted(f"{p}/zarr.json" if p else "zarr.json" for p in paths | groups)

    def _all_arrays(self) -> list[dict[str, ArrayRecord]]:
        owners = [SAMPLES_OWNER, *(Owner.listed(name) for name in self.manifest.teachers)]
        return [self.owner_arrays(owner) for owner in owners]

    def _write_group_attributes(self) -> None:
        self.group().update_attributes(  # one write of the root zarr.json (``attrs.update`` writes it per key)
            {
                "format_version": self.manifest.format_version,
                "kdcache": {
                    "status": self.manifest.status,
                    "num_samples": self.manifest.num_samples,
                    "teachers": sorted(self.manifest.teachers),
                    "manifest": MANIFEST_KEY,
                },
            }
        )

    def finalize(self, *owners: Owner) -> bool:
        """Merge each owner's commit records into the manifest, marking it complete when every shard is committed,
        then publish once; whether every one of them is complete."""
        done = [self._merge_commits(owner) for owner in owners]
        self.publish()
        return all(done)

    def _merge_commits(self, owner: Owner) -> bool:
        commits = self.valid_commits(owner)
        ordered = [commits[k] for k in sorted(commits)]
        complete = len(ordered) == self.manifest.num_shards()
        status = "complete" if complete else "building"
        name = Owner(owner).teacher_name
        if name is None:
            self.manifest.samples = self.manifest.samples.model_copy(update={"shards": ordered, "status": status})
        else:
            teacher = self.manifest.teachers[name]
            correct = sum(c.stats.get("correct", 0.0) for c in ordered)
            count = sum(c.stats.get("count", 0.0) for c in ordered)
            accuracy = correct / count if complete and count else None
            self.manifest.teachers[name] = teacher.model_copy(
                update={"shards": ordered, "status": status, "accuracy": accuracy}
            )
        return complete


def _sorted(value: Any) -> Any:
    """``value`` with every dict's keys in sorted order, as the manifest pins it: a store rebuilt from its manifest
    (HDF5 import) writes the same ``zarr.json`` bytes."""
    if isinstance(value, dict):
        return {k: _sorted(value[k]) for k in sorted(value)}
    if isinstance(value, list | tuple):
        return [_sorted(v) for v in value]
    return value


_OTHER = {"dataset": "another dataset", "views": "other views"}


def _require_same(location: StoreLocation, what: str, found: dict[str, Any], expected: dict[str, Any]) -> None:
    if found.get("digest") != expected.get("digest"):
        raise StoreMismatchError(
            f"store {location.url!r} was built with {_OTHER[what]} ({describe_difference(expected, found)}). Write "
            f"to a new store, or run with the {what} the store was built with"
        )


__all__ = ["StoreBuilder", "TargetLayout", "array_record", "compressors_for", "create_array", "expected_metadata"]
