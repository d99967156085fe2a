"""Semantic metadata edits: every field of every ``zarr.json`` and of the manifest, changed to another plausible
value, is refused with a typed error naming the file and the field, and ``kdcache verify`` lists it. A manifest edited
*and resealed* (its digests recomputed, as a careless tool would) is still refused by the checks that tie it to the
arrays: target parameters against array layouts, commit records against their shards, fingerprints against the
dataset, views and teacher."""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from kdcache import CachedDataset
from kdcache.errors import KdcacheError
from kdcache.store import open_store, scrub
from kdcache.store.location import StoreLocation
from kdcache.store.manifest import Manifest, write_manifest
from kdcache.views import ViewTransform
from tests.conftest import MEAN, STD
from tests.faults.ledger import Outcome, clear_error, record
from tests.faults.stores import read_everything, same_arrays

ALTERNATIVES = {"little": "big", "end": "start", "/": ".", "default": "v2", "float16": "bfloat16", "NaN": 0.0,
                "crc32c": "transpose", "bytes": "blosc", "regular": "rectilinear", "sharding_indexed": "blosc",
                "array": "group", "group": "array", "int64": "uint64", "uint8": "int8", "zstd": "lz4"}  # fmt: skip
STRUCTURAL = {  # edits beyond one field: the ones that used to crash or pass silently
    "crc32c-removed": lambda m: m["codecs"][0]["configuration"]["codecs"].pop(),
    "transpose-inserted": lambda m: m["codecs"][0]["configuration"]["codecs"].insert(
        0, {"name": "transpose", "configuration": {"order": list(range(len(m["shape"])))[::-1]}}
    ),
    "blosc-inserted": lambda m: m["codecs"][0]["configuration"]["codecs"].insert(
        1,
        {
            "name": "blosc",
            "configuration": {"cname": "lz4", "clevel": 5, "shuffle": "shuffle", "typesize": 2, "blocksize": 0},
        },
    ),
    "storage-transformer-added": lambda m: m.update(storage_transformers=[{"name": "unknown"}]),
    "attribute-added": lambda m: m.setdefault("attributes", {}).update(note="edited"),
    "index-crc32c-removed": lambda m: m["codecs"][0]["configuration"]["index_codecs"].pop(),
}


def altered(value: Any) -> Any:
    """Another plausible value of a JSON leaf."""
    if isinstance(value, bool):
        return not value
    if isinstance(value, int | float):
        return value + 1
    if isinstance(value, str):
        return ALTERNATIVES.get(value, value + "x")
    return 0


def leaves(doc: Any, path: tuple = ()) -> Iterator[tuple]:
    """The path (keys and list indices) of every leaf of a JSON document."""
    if isinstance(doc, dict):
        for key, value in doc.items():
            yield from leaves(value, (*path, key))
    elif isinstance(doc, list) and doc:
        for i, value in enumerate(doc):
            yield from leaves(value, (*path, i))
    else:
        yield path


def set_leaf(doc: Any, path: tuple, value: Any) -> None:
    for part in path[:-1]:
        doc = doc[part]
    doc[path[-1]] = value


def metadata_edits(store: Path) -> list[tuple[str, str, Any]]:
    """(file, edit name, edit) for every leaf of every zarr.json, and the structural edits of every array's."""
    edits = []
    for file in sorted(store.rglob("zarr.json")):
        key = file.relative_to(store).as_posix()
        doc = json.loads(file.read_text())
        for path in leaves(doc):
            edits.append((key, ".".join(map(str, path)), lambda m, p=path: set_leaf(m, p, altered(_get(m, p)))))
        if doc.get("node_type") == "array":
            edits += [(key, name, edit) for name, edit in STRUCTURAL.items()]
    return edits


def _get(doc: Any, path: tuple) -> Any:
    for part in path:
        doc = doc[part]
    return doc


def fresh_copy(clean: Path, work: Path) -> Path:
    """A private copy of the clean store for one edit."""
    if work.exists():
        shutil.rmtree(work)
    return Path(shutil.copytree(clean, work))


def test_every_zarr_json_field_edit_is_refused_and_listed(tmp_path, clean_store, clean_arrays):
    edits = metadata_edits(clean_store)
    assert len(edits) > 150  # every field of the 9 zarr.json files of the suite's store, and the structural edits
    failures = []
    for key, name, edit in edits:
        store = fresh_copy(clean_store, tmp_path / "store.zarr")
        doc = json.loads((store / key).read_text())
        edit(doc)
        (store / key).write_text(json.dumps(doc))
        outcome = Outcome("metadata fields", f"{key}:{name}")
        try:
            values = read_everything(store)
        except KdcacheError as exc:
            outcome.detected = clear_error(exc, str(store), key, "was changed after the store was written")
        else:
            outcome.silent_wrong = not same_arrays(values, clean_arrays)
        outcome.detected &= any(key in line for line in scrub(str(store)))
        if not record(outcome).passed:
            failures.append(outcome)
    assert failures == []


def manifest_edits(store: Path) -> list[tuple[str, Any]]:
    data = json.loads((store / "kdcache.manifest.json").read_text())
    return [(".".join(map(str, path)), path) for path in leaves(data)]


def test_every_manifest_field_edit_is_refused_naming_its_record(tmp_path, clean_store):
    edits = manifest_edits(clean_store)
    assert len(edits) > 300  # every leaf: fingerprints, array and target records, each shard commit, pinned metadata
    failures = []
    for name, path in edits:
        store = fresh_copy(clean_store, tmp_path / "store.zarr")
        data = json.loads((store / "kdcache.manifest.json").read_text())
        set_leaf(data, path, altered(_get(data, path)))
        (store / "kdcache.manifest.json").write_text(json.dumps(data, indent=1, sort_keys=True))
        outcome = Outcome("manifest fields", name)
        try:
            open_store(str(store))
        except KdcacheError as exc:
            named = path[0] in ("sections", "digest", "format_version") or str(path[0]) in str(exc)
            outcome.detected = clear_error(exc, "kdcache.manifest.json") and named
        if not record(outcome).passed:
            failures.append(outcome)
    assert failures == []


def resealed(store: Path, edit) -> None:
    """Edit the manifest and recompute its digests, as a tool that rewrites it carelessly would."""
    location = StoreLocation(store)
    data = json.loads(location.read_bytes("kdcache.manifest.json"))
    edit(data)
    write_manifest(location, Manifest.model_validate(data))


def _other_shard_key(m: dict) -> None:
    files = m["teachers"]["t8"]["shards"]
    files[1]["files"]["teachers/t8/logits"]["key"] = files[2]["files"]["teachers/t8/logits"]["key"]


RESEALED = {
    "target-dtype": lambda m: m["teachers"]["t8"]["targets"]["logits"]["params"].update(dtype="bfloat16"),
    "target-value-shape": lambda m: m["teachers"]["t8"]["targets"]["logits"].update(value_shape=[11]),
    "target-encoding": lambda m: m["teachers"]["t8"]["targets"]["logits"]["params"].update(encoding="int8"),
    "commit-names-another-shard": _other_shard_key,
    "commit-range": lambda m: m["teachers"]["t8"]["shards"][0].update(stop=63),
    "array-dtype": lambda m: m["samples"]["arrays"]["samples/index"].update(dtype="int32"),
    "pinned-endian": lambda m: m["metadata"]["teachers/t8/logits/zarr.json"]["codecs"][0]["configuration"]["codecs"][0]["configuration"].update(endian="big"),
    "num-samples": lambda m: m.update(num_samples=299),
    "shard-samples": lambda m: m.update(shard_samples=128),
    "dataset-length": lambda m: m["dataset"].update(length=299),
    "views-count": lambda m: m["views"].update(count=2),
}  # fmt: skip


@pytest.mark.parametrize("edit", sorted(RESEALED))
def test_a_resealed_manifest_is_still_refused_by_the_cross_checks(edit, store_copy, digits_small):
    resealed(store_copy, RESEALED[edit])
    outcome = Outcome("manifest fields", f"resealed-{edit}")
    views = ViewTransform(count=1, seed=0, mean=MEAN, std=STD)
    with pytest.raises(KdcacheError) as raised:
        data = CachedDataset(digits_small, open_store(str(store_copy)), teacher="t8", targets=["logits"], views=views)
        data[np.arange(len(digits_small))]
    outcome.detected = clear_error(raised.value, str(store_copy))
    assert record(outcome).passed, (outcome, str(raised.value))
