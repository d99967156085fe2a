"""Publishing a manifest without dropping another writer's records.

The lock keeps one writer per store, but a writer whose lock was broken (it looked stale: another host, a hung
process) may still publish. Before publishing, a builder re-reads the manifest on disk and takes in what it holds
beyond the builder's copy: teachers it does not know, and commit records of shards its copy lacks whose files are
still there with their recorded sizes. Its own records win where both have one.
"""

from __future__ import annotations

import logging
from typing import Any, TypeVar

from kdcache.errors import StoreMismatchError, say
from kdcache.store.layout import MANIFEST_KEY, SAMPLES_OWNER, Owner
from kdcache.store.location import StoreLocation
from kdcache.store.manifest import Manifest, SamplesRecord, ShardCommit, TeacherRecord, read_manifest

log = logging.getLogger(__name__)


def merge_published(location: StoreLocation, manifest: Manifest) -> Manifest:
    """``manifest`` with the published manifest's other records merged in (``manifest`` itself when none)."""
    if not location.exists(MANIFEST_KEY):
        return manifest
    published = read_manifest(location, upgrading=True)
    if published.num_samples != manifest.num_samples:
        return manifest  # a store rebuilt in place: this builder's copy is the one to publish
    shards = manifest.num_shards()
    teachers = dict(manifest.teachers)
    for name, theirs in published.teachers.items():
        if name not in teachers:
            log.warning("keeping teacher %r, published in %s by another writer", name, location.url)
            teachers[name] = theirs
        else:
            teachers[name] = merged_owner(location, Owner.listed(name), teachers[name], theirs, shards)
    samples = merged_owner(location, SAMPLES_OWNER, manifest.samples, published.samples, shards)
    return manifest.model_copy(update={"samples": samples, "teachers": teachers})


RecordT = TypeVar("RecordT", SamplesRecord, TeacherRecord)


def merged_owner(location: StoreLocation, owner: Owner, ours: RecordT, theirs: RecordT, num_shards: int) -> RecordT:
    """``ours`` with the commit records of ``theirs`` for shards ``ours`` lacks whose files are still there with
    their recorded sizes (ours win where both have one; a lost file stays a shard to rewrite).

    Two records of one teacher made from different teachers cannot be merged: the error names both."""
    if (
        isinstance(ours, TeacherRecord)
        and isinstance(theirs, TeacherRecord)
        and ours.fingerprint.get("digest") != theirs.fingerprint.get("digest")
    ):
        raise StoreMismatchError(
            f"store {location.url!r}: another writer published {owner} made from a different teacher while this one "
            f"wrote it; nothing of either was dropped from disk. Re-run one of them under another {say('teacher_name=', 'teacher.name')}"
        )
    mine = {c.index for c in ours.shards}
    extra: list[ShardCommit] = [
        c
        for c in theirs.shards
        if c.index not in mine and all(location.size(f.key) == f.nbytes for f in c.files.values())
    ]
    if not extra:
        return ours
    log.warning("keeping %d commit record(s) of %s published by another writer", len(extra), owner)
    update: dict[str, Any] = {"shards": sorted([*ours.shards, *extra], key=lambda c: c.index)}
    if len(update["shards"]) == num_shards and theirs.status == "complete":
        update["status"] = "complete"
        if isinstance(theirs, TeacherRecord):
            update["accuracy"] = theirs.accuracy
    return ours.model_copy(update=update)
