"""The commit manifest: the single source of truth about what a store holds (DESIGN.md §3).

Readers trust only the manifest. A shard not listed in it does not exist; a listed shard whose size or digest
differs is corrupt. While a store is being built each finished shard gets its own small commit record under
``.kdcache/commits/<owner>/``; the builder merges them into the manifest and publishes ``complete`` last.
"""

from __future__ import annotations

import json
from importlib.metadata import PackageNotFoundError, version
from typing import Any, Literal, NoReturn

from pydantic import BaseModel, ConfigDict, ValidationError

from kdcache.errors import StoreFormatError, StoreNotFoundError, say
from kdcache.fingerprint import canonical_digest
from kdcache.names import COMPRESSORS, Compressor, is_compressor
from kdcache.store.bounded import (
    COMMIT_MAX_BYTES,
    MANIFEST_MAX_BYTES,
    MAX_COMMIT_RECORDS,
    commit_records,
    load_json,
    manifest_limit,
)
from kdcache.store.layout import (
    COMMITS_PREFIX,
    FORMAT_VERSION,
    MANIFEST_KEY,
    SAMPLES_OWNER,
    Owner,
    shard_count,
)
from kdcache.store.location import StoreLocation

Status = Literal["building", "complete"]
RECORDED_LIBRARIES = ("kdcache", "zarr", "numcodecs", "numpy", "torch")  # the libraries that shape a store's bytes


class _Record(BaseModel):
    model_config = ConfigDict(extra="forbid")


class ArrayRecord(_Record):
    """An array as created: full shape, dtype, inner chunk and shard shapes, compressor."""

    path: str
    shape: list[int]
    dtype: str
    chunks: list[int]
    shards: list[int]
    compressor: str

    def checked_compressor(self) -> Compressor:
        """The array's compressor; one kdcache never writes means the manifest is damaged."""
        if not is_compressor(self.compressor):
            raise StoreFormatError(
                f"array {self.path!r} records compressor {self.compressor!r}, which kdcache never writes (it writes "
                f"{', '.join(COMPRESSORS)}); the manifest is damaged: rebuild the store with `kdcache precompute`"
            )
        return self.compressor


class FileDigest(_Record):
    """One shard file as committed."""

    key: str
    nbytes: int
    sha256: str


class ShardCommit(_Record):
    """Everything one writer committed for one shard range: a file per array, plus statistics of the range."""

    owner: str
    index: int
    start: int
    stop: int
    files: dict[str, FileDigest]
    stats: dict[str, float] = {}


class TargetRecord(_Record):
    """A cached target: its kind, the parameters it was made with, the shape of one extracted value (what its
    arrays encode, e.g. ``[C]`` for class logits) and the arrays that hold it."""

    kind: str
    params: dict[str, Any]
    arrays: dict[str, ArrayRecord]
    value_shape: list[int] | None = None  # recorded from format 2 on


class TeacherRecord(_Record):
    fingerprint: dict[str, Any]
    status: Status = "building"
    targets: dict[str, TargetRecord]
    accuracy: float | None = None
    shards: list[ShardCommit] = []


class SamplesRecord(_Record):
    arrays: dict[str, ArrayRecord]
    status: Status = "building"
    shards: list[ShardCommit] = []


class Manifest(_Record):
    format_version: int = FORMAT_VERSION
    num_samples: int
    shard_samples: int
    dataset: dict[str, Any]
    views: dict[str, Any]
    samples: SamplesRecord
    teachers: dict[str, TeacherRecord] = {}
    library: dict[str, str] = {}
    metadata: dict[str, dict[str, Any]] = {}  # every zarr.json document as written, by key (format 2)
    sections: dict[str, str] = {}  # SHA-256 of each record of this manifest, to name what an edit changed
    digest: str = ""  # SHA-256 over ``sections``: any edit of the manifest changes it

    @property
    def status(self) -> Status:
        """``complete`` when the sample arrays and every teacher are complete."""
        parts = [self.samples.status, *(t.status for t in self.teachers.values())]
        return "complete" if all(p == "complete" for p in parts) else "building"

    def num_shards(self) -> int:
        return shard_count(self.num_samples, self.shard_samples)

    def all_commits(self) -> list[ShardCommit]:
        return [*self.samples.shards, *(s for t in self.teachers.values() for s in t.shards)]


def read_manifest(location: StoreLocation, *, upgrading: bool = False) -> Manifest:
    """Load and validate the manifest; the error says whether the store is missing, foreign or too new (a format-1
    manifest is read only when ``upgrading``)."""
    try:
        raw = location.read_bytes(MANIFEST_KEY, limit=MANIFEST_MAX_BYTES)
    except FileNotFoundError:
        what = "holds no kdcache manifest" if location.exists() else "does not exist"
        raise StoreNotFoundError(
            f"store {location.url!r} {what}; build it first ({say('kdcache.precompute(...)', '`kdcache precompute`')}), "
            "or check the path"
        ) from None
    return parse_manifest(
        raw, source=f"store {location.url!r}", key=f"{location.url}/{MANIFEST_KEY}", upgrading=upgrading
    )


def parse_manifest(raw: bytes | str, *, source: str, key: str, upgrading: bool = False) -> Manifest:
    """Validate manifest JSON read from ``key`` of ``source`` (a store, or an HDF5 export's attribute).

    A manifest of format 2 or later must hash to its own ``digest``; an edit names the records it changed. A store of
    an older format is refused with the way to upgrade it, unless ``upgrading`` (what ``kdcache upgrade`` reads)."""
    if len(raw) > MANIFEST_MAX_BYTES:
        _refuse(key, f"is {len(raw):,} bytes, over the {MANIFEST_MAX_BYTES:,}-byte limit for a manifest")
    if (records := commit_records(raw)) > MAX_COMMIT_RECORDS:
        _refuse(key, f"holds {records:,} commit records, over the limit of {MAX_COMMIT_RECORDS:,}")
    try:
        data = load_json(raw, key)
    except json.JSONDecodeError as exc:
        raise StoreFormatError(f"{key} is not valid JSON ({exc}); the store is damaged") from None
    _check_bounds(data, len(raw), key)
    version = data.get("format_version") if isinstance(data, dict) else None
    if version == 1 and not upgrading:
        raise StoreFormatError(
            f"{source} is format 1, written before per-sample content digests and pinned metadata; this kdcache "
            f"reads format {FORMAT_VERSION}. Upgrade it in place with {_upgrade()} (reads the dataset it was built "
            f"from; the teacher is not needed) or rebuild it with {say('precompute(...)', '`kdcache precompute`')}"
        )
    if version == 2 and not upgrading:
        raise StoreFormatError(
            f"{source} is format 2, written before per-view input digests and view steps identified by content; this "
            f"kdcache reads format {FORMAT_VERSION}. Upgrade it in place with {_upgrade()} (replays its views from "
            f"the dataset; the teacher is not needed) or rebuild it with {say('precompute(...)', '`kdcache precompute`')}"
        )
    if version not in (1, 2, FORMAT_VERSION):
        raise StoreFormatError(
            f"{source} has format_version {version!r} ({key}); this kdcache reads version {FORMAT_VERSION}. "
            "Upgrade kdcache or rebuild the store"
        )
    try:
        manifest = Manifest.model_validate(data)
    except ValidationError as exc:
        raise StoreFormatError(f"{key} does not match the manifest schema: {exc}") from None
    if version != 1:
        _check_digest(manifest, key)
    return manifest


def _check_bounds(data: Any, size: int, key: str) -> None:
    """Before pydantic builds a record: the shard count is in range, no owner lists more commit records than there
    are shards, and the manifest weighs no more than its shard count allows (:mod:`kdcache.store.bounded`)."""
    if not isinstance(data, dict):
        return  # the schema check names it
    num, shard = data.get("num_samples"), data.get("shard_samples")
    if not (isinstance(num, int) and isinstance(shard, int) and num >= 0 and shard > 0):
        return
    shards = shard_count(num, shard)
    listed = data.get("teachers")
    teachers: dict[str, Any] = listed if isinstance(listed, dict) else {}
    owners = {SAMPLES_OWNER: data.get("samples"), **{Owner.listed(str(n)): t for n, t in teachers.items()}}
    counts = {
        o: len(r["shards"]) for o, r in owners.items() if isinstance(r, dict) and isinstance(r.get("shards"), list)
    }
    limit = manifest_limit(shards, len(owners))
    layout = f"num_samples {num:,} in shards of shard_samples {shard:,}"
    if shards > MAX_COMMIT_RECORDS:
        _refuse(key, f"declares {shards:,} shards ({layout}), over the limit of {MAX_COMMIT_RECORDS:,}")
    for owner, count in counts.items():
        if count > shards:
            _refuse(key, f"lists {count:,} commit records for {owner}, which has {shards:,} shards ({layout})")
    if size > limit:
        _refuse(
            key,
            f"is {size:,} bytes, over the {limit:,} a manifest of {shards:,} shards and {len(owners)} owners may weigh",
        )


def _refuse(key: str, problem: str) -> NoReturn:
    raise StoreFormatError(
        f"{key} {problem}: the manifest is damaged or was planted, and nothing of it was used. Restore it from a "
        "copy of the store or rebuild the store with `kdcache precompute`"
    )


def _check_digest(manifest: Manifest, key: str) -> None:
    """The manifest hashes to what it recorded when it was published; otherwise name the records that changed."""
    found = section_digests(manifest)
    changed = sorted(k for k in found.keys() | manifest.sections.keys() if found.get(k) != manifest.sections.get(k))
    if changed or canonical_digest(manifest.sections) != manifest.digest:
        what = f"record(s) {', '.join(changed)}" if changed else "its section digests"
        raise StoreFormatError(
            f"{key} was edited after it was written: {what} no longer match(es) the digest recorded at publication. "
            "Restore the manifest from a copy of the store, or rebuild the store with `kdcache precompute`"
        )


def section_digests(manifest: Manifest) -> dict[str, str]:
    """SHA-256 of every record of the manifest (scalars and fingerprints, each array and target record, each owner's
    shard list), keyed by its dotted path: small enough that an edit is named, complete enough that none is missed."""
    data = manifest.model_dump(mode="json", exclude={"sections", "digest"})
    parts: dict[str, Any] = {k: v for k, v in data.items() if k not in ("samples", "teachers", "metadata")}
    parts |= {f"metadata.{path}": doc for path, doc in data["metadata"].items()}
    parts |= {f"samples.{k}": v for k, v in data["samples"].items() if k != "arrays"}
    parts |= {f"samples.arrays.{path}": rec for path, rec in data["samples"]["arrays"].items()}
    for name, teacher in data["teachers"].items():
        parts |= {f"teachers.{name}.{k}": v for k, v in teacher.items() if k != "targets"}
        parts |= {f"teachers.{name}.targets.{t}": rec for t, rec in teacher["targets"].items()}
    parts["records"] = sorted(parts)  # a record removed or added changes the digest too
    return {k: canonical_digest({"value": v}) for k, v in parts.items()}


def sealed(manifest: Manifest) -> Manifest:
    """``manifest`` with its section digests and digest computed: what is published."""
    sections = section_digests(manifest)
    return manifest.model_copy(update={"sections": sections, "digest": canonical_digest(sections)})


def write_manifest(location: StoreLocation, manifest: Manifest) -> Manifest:
    """Seal and publish the manifest atomically (readers see the old or the new one, never half of either)."""
    manifest = sealed(manifest)
    location.write_bytes(MANIFEST_KEY, manifest_bytes(manifest))
    return manifest


def manifest_bytes(manifest: Manifest) -> bytes:
    return (json.dumps(manifest.model_dump(mode="json"), indent=1, sort_keys=True) + "\n").encode()


def commit_key(owner: str, index: int) -> str:
    return f"{COMMITS_PREFIX}/{owner}/{index:06d}.json"


def write_commit(location: StoreLocation, commit: ShardCommit) -> None:
    location.write_bytes(commit_key(commit.owner, commit.index), commit.model_dump_json().encode())


def read_commits(location: StoreLocation, owner: Owner) -> dict[int, ShardCommit]:
    """Commit records of ``owner`` by shard index; unreadable records (a torn write cannot happen, but a hand-edited
    or truncated file can) are ignored, so that shard is simply rewritten."""
    commits: dict[int, ShardCommit] = {}
    for key in location.list(f"{COMMITS_PREFIX}/{owner}"):
        if not key.endswith(".json"):
            continue
        try:
            commit = ShardCommit.model_validate_json(location.read_bytes(key, limit=COMMIT_MAX_BYTES))
        except (ValidationError, ValueError):
            continue
        if commit.owner == owner and key == commit_key(owner, commit.index):  # a record in another's file is ignored
            commits[commit.index] = commit
    return commits


def library_versions() -> dict[str, str]:
    """Versions of the libraries that shape a store's bytes, as the manifest records them."""
    found = {}
    for name in RECORDED_LIBRARIES:
        try:
            found[name] = version(name)
        except PackageNotFoundError:
            found[name] = "not installed"
    return found


def _upgrade() -> str:
    """How an older store is upgraded in place, in the caller's words."""
    return say(
        "kdcache.tools.upgrade.upgrade_store(url, dataset, views=...)", "`kdcache upgrade STORE --pipeline P.yaml`"
    )
