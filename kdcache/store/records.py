"""Every record of a manifest bound to what it describes, so a manifest edited *and resealed* is still refused.

The manifest's seal (:mod:`kdcache.store.manifest`) is a plain SHA-256 any tool can recompute: it catches accidental
edits and torn writes, not a tool that rewrites a record and the seal together. These checks tie each record to
facts stored elsewhere, which such a tool would have to rewrite consistently too:

* a teacher's target and array records name only arrays under its own path (``teachers/<name>/...``), and its shard
  commits are its own (``owner``); the sample arrays live under ``samples/`` and ``views/``;
* each array's pinned ``zarr.json`` attributes (``attributes.kdcache``) name the same owner, target, kind,
  parameters and array as the manifest's record (format 3; an older store's are rewritten by its upgrade), and the dtype they say the values decode to is the array's data
  type (or ``bfloat16`` for the ``uint16`` bits of a bfloat16 target);
* a top-k target's temperatures are distinct; the names of the view parameters are the view spec's.

What the values themselves must satisfy (top-k mass, int8 scales) is checked where they are read
(:mod:`kdcache.targets.logits`) and by ``kdcache verify`` over every row.
"""

from __future__ import annotations

from typing import Any

from kdcache.store.layout import FORMAT_VERSION, SAMPLES_OWNER, VIEW_PARAMS, Owner
from kdcache.store.manifest import ArrayRecord, Manifest, TargetRecord

SAMPLE_PREFIXES = ("samples/", "views/")
_BOUND_FACTS = ("teacher", "target", "kind", "params", "array")


def record_problems(url: str, manifest: Manifest) -> list[str]:
    """One line per record of ``manifest`` that does not describe what it names (empty for a consistent store)."""
    problems = [_line(url, where, problem) for where, problem in _sample_problems(manifest)]
    for name, teacher in manifest.teachers.items():
        owner = Owner.listed(name)
        for commit in teacher.shards:
            if commit.owner != owner:
                problems.append(_line(url, f"teacher {name!r}", f"lists shard {commit.index} of {commit.owner}"))
        for target, record in teacher.targets.items():
            where = f"teacher {name!r}, target {target!r}"
            problems += [_line(url, where, p) for p in target_problems(manifest, name, target, record)]
    return problems


def _line(url: str, where: str, problem: str) -> str:
    return (
        f"store {url!r}, {where}: the manifest's record {problem}. The manifest was rewritten after the store was "
        "written (its seal recomputed): restore it from a copy of the store or rebuild the store with "
        "`kdcache precompute`"
    )


def _sample_problems(manifest: Manifest) -> list[tuple[str, str]]:
    """``(where, problem)`` for each sample-array record that does not describe what it names."""
    problems: list[tuple[str, str]] = []
    for key, record in manifest.samples.arrays.items():
        if record.path != key or not key.startswith(SAMPLE_PREFIXES):
            problems.append((SAMPLES_OWNER, f"of {key} names array {record.path}, not a sample array of its own"))
            continue
        if manifest.format_version < FORMAT_VERSION:
            continue
        attrs = _attributes(manifest, record)
        if attrs.get("array") != key:
            problems.append((SAMPLES_OWNER, f"of {key} is pinned with attributes of array {attrs.get('array')!r}"))
        if key == VIEW_PARAMS and attrs.get("params") != manifest.views.get("transform", {}).get("params"):
            problems.append(("views", f"names view parameters {attrs.get('params')} the view spec does not"))
    problems += [
        (SAMPLES_OWNER, f"lists shard {c.index} of {c.owner}")
        for c in manifest.samples.shards
        if c.owner != SAMPLES_OWNER
    ]
    return problems


def target_problems(manifest: Manifest, teacher: str, target: str, record: TargetRecord) -> list[str]:
    """How the record of ``target`` of ``teacher`` disagrees with the arrays it lists and their pinned attributes."""
    problems = []
    temperatures = record.params.get("temperatures")
    if (
        record.params.get("encoding") == "topk"
        and isinstance(temperatures, list)
        and len(set(temperatures)) != len(temperatures)
    ):
        problems.append(f"declares temperatures {temperatures}, not distinct")
    for rel, array in record.arrays.items():
        own = f"{Owner.listed(teacher).path}/{rel}"
        if array.path != own:
            problems.append(f"lists array {array.path} as its {rel!r}; its own array is {own}")
            continue
        if manifest.format_version < FORMAT_VERSION:  # an older store's attributes are rewritten by its upgrade
            continue
        attrs = _attributes(manifest, array)
        expected = {"teacher": teacher, "target": target, "kind": record.kind, "params": record.params, "array": rel}
        for fact in _BOUND_FACTS:
            if _differs(attrs.get(fact), expected[fact]):
                problems.append(
                    f"says {fact} {_text(expected[fact])} for {array.path}, whose pinned attributes say "
                    f"{_text(attrs.get(fact))}"
                )
        problem = _decoded_dtype_problem(array, attrs.get("dtype"), record.params.get("dtype"))
        if problem:
            problems.append(problem)
    return problems


def _decoded_dtype_problem(array: ArrayRecord, decodes_to: Any, target_dtype: Any) -> str:
    """The attributes' decoded dtype is the array's data type, or bfloat16 for a bfloat16 target's uint16 bits."""
    if decodes_to == array.dtype or (decodes_to, array.dtype, target_dtype) == ("bfloat16", "uint16", "bfloat16"):
        return ""
    return (
        f"of {array.path} holds {array.dtype} data for a {target_dtype} target, but its pinned attributes say the "
        f"values decode to {_text(decodes_to)}: a plain zarr reader would decode other numbers"
    )


def _differs(found: Any, expected: Any) -> bool:
    """Whether an attribute contradicts the record. A parameter the attributes leave ``None`` was resolved only
    after the arrays were created (a token target's vocabulary size, from the first batch): not a contradiction."""
    if isinstance(found, dict) and isinstance(expected, dict):
        return any(found.get(k) is not None and found.get(k) != expected.get(k) for k in found.keys() | expected.keys())
    return found != expected


def _attributes(manifest: Manifest, array: ArrayRecord) -> dict[str, Any]:
    doc = manifest.metadata.get(f"{array.path}/zarr.json", {})
    attrs = doc.get("attributes", {}) if isinstance(doc, dict) else {}
    found = attrs.get("kdcache", {}) if isinstance(attrs, dict) else {}
    return found if isinstance(found, dict) else {}


def _text(value: Any) -> str:
    return "nothing" if value is None else repr(value)
