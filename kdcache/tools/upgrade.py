"""``kdcache upgrade``: bring a format-1 or format-2 store to format 3 in place, without the teacher.

Format 3 records a digest of every view's model input (``samples/view_digest``) and identifies the steps of a
torchvision pipeline by what they are, not by their ``repr``. From format 2, an upgrade checks that the views it is
given are the ones the store recorded, replays every view from the dataset and records its digest. Only stores whose
views are data (normalisation and kdcache's ops, whose drawn numbers ``views/params`` holds and the upgrade checks)
are upgraded: a format-2 torchvision pipeline was recorded by ``repr``, which proves nothing, so such a store must
be rebuilt. Format 2 records what format 1 could not prove: a content digest of every sample (``samples/digest``), every
``zarr.json`` pinned in the manifest, each target's value shape, the manifest's own digest, and self-describing array
attributes. An upgrade first proves the old store sound — complete, every shard's size and SHA-256 as recorded,
every ``zarr.json`` exactly what kdcache writes for its array — and the dataset the one it was built from (its
format-1 fingerprint). Then it writes the digests from that dataset, describes every array, and publishes a format-2
manifest last; an interrupted upgrade leaves a format-1 store that upgrades again. Target values are not touched: a
top-k log-sum-exp keeps its format-1 meaning (over the float32 logits, see docs/targets.md).
"""

from __future__ import annotations

import numpy as np
from tqdm.auto import tqdm

from kdcache.datasets.base import SampleDataset
from kdcache.datasets.digest import blake2b_sample_digests
from kdcache.datasets.fingerprint import dataset_fingerprint
from kdcache.errors import StoreFormatError, StoreIncompleteError, StoreMismatchError
from kdcache.fingerprint import describe_difference
from kdcache.precompute.samples import read_facts, sample_arrays
from kdcache.store import (
    FORMAT_VERSION,
    SAMPLE_DIGEST,
    SAMPLES_OWNER,
    VIEW_DIGEST,
    VIEW_PARAMS,
    StoreBuilder,
    StoreLocation,
    StoreLock,
    StoreReader,
    io_errors,
    open_store,
    shard_ranges,
)
from kdcache.store.integrity import differences, read_document, scrub_problems
from kdcache.store.layout import ArraySpec
from kdcache.store.manifest import ArrayRecord, Manifest, TargetRecord, read_manifest
from kdcache.store.writer import expected_metadata
from kdcache.targets import build_target
from kdcache.views import Views, views_from_spec


def upgrade_store(
    url: str,
    dataset: SampleDataset,
    *,
    views: Views | None = None,
    batch_size: int = 256,
    progress: bool = True,
) -> StoreReader:
    """Upgrade the format-1 or format-2 store at ``url`` to format 3 with the ``dataset`` and ``views`` it was built
    from (``views`` may be left out when they are normalisation and kdcache's ops: rebuilt from the store); returns
    it opened.

    >>> upgrade_store("runs/digits_kd/cache/train.zarr", HDF5Dataset(DIGITS_FILE, "train"))  # doctest: +SKIP
    """
    location = StoreLocation(url)
    with io_errors(location, "upgrading"):
        manifest = read_manifest(location, upgrading=True)
    with io_errors(location, "upgrading"), StoreLock(location):
        manifest = read_manifest(location, upgrading=True)  # again, under the lock: nobody wrote in between
        if manifest.format_version == FORMAT_VERSION:
            raise StoreFormatError(f"store {url!r} is already format {FORMAT_VERSION}; there is nothing to upgrade")
        _require_sound(location, manifest)
        _require_dataset(url, manifest, dataset)
        if manifest.format_version == 2:
            _require_format_two_digests(location, manifest, dataset, batch_size)
        views = views if views is not None else views_from_spec(manifest.views)
        old_format = manifest.format_version
        builder = StoreBuilder(
            location, _format_three(url, _format_two(manifest) if old_format == 1 else manifest, views)
        )
        if old_format == 1:
            _describe_arrays(builder, dataset)
        described = {s.path: s for s in sample_arrays(dataset, views.count, views.param_names)}
        builder.add_sample_array(described[VIEW_DIGEST])
        builder.describe_array(SAMPLE_DIGEST, described[SAMPLE_DIGEST].attributes)  # the digest is XXH3 now
        _write_digests(builder, dataset, views, batch_size, progress, old_format)
        builder.finalize(SAMPLES_OWNER)  # publishes the format-3 manifest, pinning every zarr.json, last
    return open_store(url)


def _require_sound(location: StoreLocation, manifest: Manifest) -> None:
    """Complete, undamaged, and every array laid out exactly as kdcache lays it out: only then is it pinned."""
    if manifest.status != "complete":
        raise StoreIncompleteError(
            f"store {location.url!r} is format 1 and {manifest.status}; only complete stores are upgraded. Finish it "
            "with the kdcache version that wrote it, or rebuild it with `kdcache precompute`"
        )
    owners = StoreReader(location, manifest).owner_arrays()
    problems = scrub_problems(location, manifest, owners)
    for records in owners.values():
        for record in records.values():
            found = {k: v for k, v in read_document(location, f"{record.path}/zarr.json").items() if k != "attributes"}
            expected = expected_metadata(_spec_of(record), manifest.num_samples, manifest.shard_samples)
            expected.pop("attributes", None)
            if found != expected:
                fields = "; ".join(differences(expected, found)[:5]).replace("manifest pinned", "kdcache writes")
                problems.append(f"{record.path}/zarr.json is not what kdcache writes for it ({fields})")
    if problems:
        raise StoreFormatError(
            f"store {location.url!r} cannot be upgraded: {len(problems)} problem(s), first: {problems[0]}. Restore "
            "the damaged files or rebuild the store with `kdcache precompute`"
        )


def _require_dataset(url: str, manifest: Manifest, dataset: SampleDataset) -> None:
    num_classes = manifest.dataset.get("num_classes")
    if num_classes is not None and not isinstance(num_classes, int):
        raise StoreFormatError(
            f"store {url!r} records num_classes {num_classes!r} in its dataset fingerprint, where kdcache writes a "
            "whole number or null; the manifest is damaged: rebuild the store with `kdcache precompute`"
        )
    found = dataset_fingerprint(dataset, num_classes=num_classes)
    if found.get("digest") != manifest.dataset.get("digest"):
        raise StoreMismatchError(
            f"store {url!r} was built from another dataset ({describe_difference(found, manifest.dataset)}); the "
            "upgrade records per-sample digests from the dataset it is given, so it must be the one the store was "
            "built from. Point the upgrade at that data (the pipeline's data section) or rebuild the store"
        )


def _format_three(url: str, manifest: Manifest, views: Views) -> Manifest:
    """The manifest with the views described by content, once the given views prove to be the recorded ones.

    Views made by code (a torchvision pipeline, an eval pipeline, mixing) were recorded by ``repr`` in format 2, which
    cannot prove what they were (``RandomApply`` does not show ``p``, a lambda shows nothing): recording digests of
    today's replay could bless inputs the teacher never saw, so such a store is refused, to be rebuilt."""
    transform = manifest.views.get("transform", {})
    if manifest.format_version == 2 and any(key in transform for key in ("pipeline", "eval", "mix")):
        raise StoreFormatError(
            f"store {url!r} is format 2 and its views were made by a torchvision pipeline, recorded by each step's "
            "repr; a repr does not say what a step does, so the upgrade cannot prove which inputs the teacher saw. "
            "Rebuild the store with `kdcache precompute` (format 3 records every view's input digest)"
        )
    now = views.spec()
    if manifest.views != now:
        raise StoreMismatchError(
            f"store {url!r} was built with other views than the upgrade was given "
            f"({describe_difference(now, manifest.views)}); the upgrade replays every view to record its digest, so "
            "it needs the views the store was built with (the pipeline's views section, or views=)"
        )
    return manifest.model_copy(update={"format_version": FORMAT_VERSION, "views": now})


def _format_two(manifest: Manifest) -> Manifest:
    """The manifest with the format-2 records a format-1 store lacks (the digest array is declared separately)."""
    classes = manifest.dataset.get("num_classes")
    teachers = {
        name: teacher.model_copy(
            update={
                "targets": {
                    t: rec.model_copy(update={"value_shape": _value_shape(rec, classes)})
                    for t, rec in teacher.targets.items()
                }
            }
        )
        for name, teacher in manifest.teachers.items()
    }
    return manifest.model_copy(update={"format_version": FORMAT_VERSION, "teachers": teachers})


def _value_shape(record: TargetRecord, classes: int | None) -> list[int]:
    """The extracted value shape format 1 did not record: the arrays' sample shape, or ``[C]`` for top-k (the only
    encoding whose arrays do not show C); the one whose layout reproduces the recorded arrays."""
    target = build_target(record.kind, record.params)
    found = {rel: (a.shape[2:], a.dtype) for rel, a in record.arrays.items()}
    candidates = [next(iter(record.arrays.values())).shape[2:], *([[classes]] if classes else [])]
    for shape in candidates:
        try:
            layout = target.layout(tuple(shape))
        except ValueError:
            continue
        if {rel: (list(a.sample_shape), a.dtype) for rel, a in layout.items()} == found:
            return list(shape)
    raise StoreFormatError(f"the arrays of target {target.name!r} match no value shape of its kind {record.kind!r}")


def _describe_arrays(builder: StoreBuilder, dataset: SampleDataset) -> None:
    """Declare ``samples/digest`` and write every array's self-description into its zarr.json."""
    manifest = builder.manifest
    names = manifest.views.get("transform", {}).get("params", [])
    described = {s.path: s for s in sample_arrays(dataset, manifest.views.get("count", 1), names)}
    builder.add_sample_array(described[SAMPLE_DIGEST])
    for path in manifest.samples.arrays:
        if path != SAMPLE_DIGEST:
            builder.describe_array(path, described[path].attributes)
    for name, teacher in manifest.teachers.items():
        for record in teacher.targets.values():
            target = build_target(record.kind, record.params)
            for rel, (_, attributes) in target.stored_arrays(name, tuple(record.value_shape or ())).items():
                builder.describe_array(record.arrays[rel].path, attributes)


def _write_digests(
    builder: StoreBuilder,
    dataset: SampleDataset,
    views: Views,
    batch_size: int,
    progress: bool,
    old: int,
) -> None:
    """Recommit the sample arrays shard by shard with the digests a format-``old`` store lacks (the other sample
    arrays keep their bytes)."""
    cache = StoreReader(builder.location, builder.manifest)
    readers = {
        path: cache.array_reader(rec, SAMPLES_OWNER, in_memory=False)
        for path, rec in builder.manifest.samples.arrays.items()
        if path != VIEW_DIGEST and (old == 2 or path != SAMPLE_DIGEST)
    }
    ranges = shard_ranges(builder.manifest.num_samples, builder.manifest.shard_samples)
    for index, (lo, hi) in enumerate(tqdm(ranges, desc="upgrade", unit="shard", disable=not progress)):
        rows: dict[str, np.ndarray] = {path: reader.read_shard(index) for path, reader in readers.items()}
        facts = read_facts(dataset, views, lo, hi, batch_size)
        if VIEW_PARAMS in rows and not np.array_equal(rows[VIEW_PARAMS].view(np.uint32), facts.params.view(np.uint32)):
            raise StoreMismatchError(
                f"store {builder.location.url!r}: the views replay with other numbers than {VIEW_PARAMS} holds for "
                f"samples {lo}..{hi - 1} (another view RNG or op code); the upgrade cannot record their digests. "
                "Upgrade with the kdcache version that built the store, or rebuild it"
            )
        rows[VIEW_DIGEST], rows[SAMPLE_DIGEST] = facts.inputs, facts.digests
        builder.commit(SAMPLES_OWNER, index, rows)


def _require_format_two_digests(
    location: StoreLocation, manifest: Manifest, dataset: SampleDataset, batch: int
) -> None:
    """Every sample is the one format 2 recorded (its BLAKE2b digest), before anything is re-digested or written."""
    record = manifest.samples.arrays[SAMPLE_DIGEST]
    stored = StoreReader(location, manifest).array_reader(record, SAMPLES_OWNER, in_memory=True).read_all()
    url = location.url
    for start in range(0, manifest.num_samples, batch):
        indices = np.arange(start, min(start + batch, manifest.num_samples))
        found = blake2b_sample_digests(*dataset.get_batch(indices))
        bad = np.flatnonzero((found != stored[indices]).any(axis=1))
        if len(bad):
            raise StoreMismatchError(
                f"store {url!r}: sample(s) {(indices[bad][:10]).tolist()} of the dataset given to the upgrade differ "
                "from what the store was built from (format-2 digests in samples/digest); the upgrade records new "
                "digests from this dataset, so it must be the one the store was built from"
            )


def _spec_of(record: ArrayRecord) -> ArraySpec:
    """The spec that created ``record``: teacher arrays have a view axis, sample arrays other than views/params not."""
    views = record.path.startswith(("teachers/", "views/"))
    head = 2 if views else 1
    return ArraySpec(
        record.path,
        tuple(record.shape[head:]),
        record.dtype,
        record.checked_compressor(),
        views=record.shape[1] if views else None,
    )
