"""Resealed manifests: every record class edited and the manifest's seal recomputed, as a tool that rewrites a
store carelessly (or consistently) would. Each edit is refused by opening or training with a typed error naming the
store, and listed by ``kdcache verify``; none passes silently.

Edits marked *everywhere* also rewrite the array attributes in the ``zarr.json`` files and in the manifest's pinned
copies, so only the stored values can contradict them (:mod:`kdcache.targets.invariants`).
"""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import zarr

from kdcache import CachedDataset
from kdcache.errors import KdcacheError
from kdcache.models import DigitsCNN
from kdcache.precompute import precompute
from kdcache.store import open_store
from kdcache.store.location import StoreLocation
from kdcache.store.manifest import Manifest, write_manifest
from kdcache.targets import build_target
from kdcache.tools.values import verify_problems
from kdcache.views import ViewTransform, views_from_spec
from tests.conftest import MEAN, STD
from tests.faults.ledger import Outcome, clear_error, record

TOPK = "logits_topk"
TARGETS = [{}, {"encoding": "topk", "k": 3, "temperatures": [1.0, 4.0]}, {"encoding": "int8"}]
VIEWS = ViewTransform(count=1, seed=0, mean=MEAN, std=STD)


@pytest.fixture(scope="module")
def two_teachers(tmp_path_factory, _trained_teacher, digits_small) -> Path:
    """A store of two teachers (``t8`` trained, ``t4`` untrained) with dense, top-k and int8 logits."""
    path = tmp_path_factory.mktemp("resealed") / "store.zarr"
    torch.manual_seed(4)
    for name, model in (("t8", _trained_teacher), ("t4", DigitsCNN(10, width=4).eval())):
        precompute(model, digits_small, path, targets=[build_target("logits", p) for p in TARGETS], views=VIEWS,
                   num_classes=10, teacher_name=name, shard_samples=64, progress=False)  # fmt: skip
    return path


def rewritten(store: Path, edit, *, everywhere: bool = False) -> None:
    """Apply ``edit`` to the manifest (and with ``everywhere`` write its pinned documents back into the
    ``zarr.json`` files), then reseal it."""
    location = StoreLocation(store)
    data = json.loads(location.read_bytes("kdcache.manifest.json"))
    edit(data, store)
    if everywhere:
        for key, doc in data["metadata"].items():
            (store / key).write_text(json.dumps(doc, indent=2))
    write_manifest(location, Manifest.model_validate(data))


def _attrs_everywhere(data: dict, teacher: str, target: str, **params: Any) -> None:
    """The target record's params and every pinned attribute of its arrays changed alike."""
    data["teachers"][teacher]["targets"][target]["params"].update(params)
    for key, doc in data["metadata"].items():
        if key.startswith(f"teachers/{teacher}/{target}/") and "kdcache" in doc.get("attributes", {}):
            doc["attributes"]["kdcache"]["params"].update(params)


def _swap_teachers(data: dict, store: Path) -> None:
    """``t8`` and ``t4`` exchange their target and shard records; the fingerprints stay."""
    t8, t4 = data["teachers"]["t8"], data["teachers"]["t4"]
    for field in ("targets", "shards"):
        t8[field], t4[field] = t4[field], t8[field]


def _another_owners_array(data: dict, store: Path) -> None:
    """``t8``'s dense logits record (and its commits) name ``t4``'s array and shard files."""
    data["teachers"]["t8"]["targets"]["logits"]["arrays"]["logits"]["path"] = "teachers/t4/logits"
    for mine, theirs in zip(data["teachers"]["t8"]["shards"], data["teachers"]["t4"]["shards"], strict=True):
        del mine["files"]["teachers/t8/logits"]
        mine["files"]["teachers/t4/logits"] = theirs["files"]["teachers/t4/logits"]


def _attribute_dtype(data: dict, store: Path) -> None:
    data["metadata"]["teachers/t8/logits/zarr.json"]["attributes"]["kdcache"]["dtype"] = "bfloat16"


def _negative_int8_scale(data: dict, store: Path) -> None:
    """Shard 0 of ``t8``'s int8 scales rewritten negative through zarr, its commit digest updated to match."""
    path = "teachers/t8/logits_int8/scale"
    array = zarr.open_array(str(store / path), mode="r+", zarr_format=3)
    array[0:64] = -np.asarray(array[0:64])
    digest = data["teachers"]["t8"]["shards"][0]["files"][path]
    raw = (store / digest["key"]).read_bytes()
    digest.update(nbytes=len(raw), sha256=hashlib.sha256(raw).hexdigest())
    data["metadata"][f"{path}/zarr.json"] = json.loads((store / path / "zarr.json").read_text())


def _normalisation(data: dict, store: Path) -> None:
    """The mean moved by 0.05 and the view spec rewritten as kdcache writes one (its digest recomputed): the spec
    matches itself, and only the per-view input digests stage one stored can refuse it."""
    data["views"]["transform"]["normalize"]["mean"][0] += 0.05
    data["views"] = views_from_spec(data["views"]).spec()


EDITS = {  # name: (edit, rewrite the zarr.json files too, target to train with, views given)
    "topk-temperatures-reordered": (lambda d, s: d["teachers"]["t8"]["targets"][TOPK]["params"].update(
        temperatures=[4.0, 1.0]), False, TOPK, True),
    "topk-temperatures-reordered-everywhere": (lambda d, s: _attrs_everywhere(d, "t8", TOPK, temperatures=[4.0, 1.0]),
                                               True, TOPK, True),
    "topk-temperature-changed": (lambda d, s: d["teachers"]["t8"]["targets"][TOPK]["params"].update(
        temperatures=[1.0, 2.0]), False, TOPK, True),
    "topk-temperature-changed-everywhere": (lambda d, s: _attrs_everywhere(d, "t8", TOPK, temperatures=[1.0, 2.0]),
                                            True, TOPK, True),
    "topk-temperatures-repeated": (lambda d, s: _attrs_everywhere(d, "t8", TOPK, temperatures=[4.0, 4.0]),
                                   True, TOPK, True),
    "teacher-records-swapped": (_swap_teachers, False, "logits", True),
    "record-names-another-owners-array": (_another_owners_array, False, "logits", True),
    "commit-names-another-owner": (lambda d, s: d["teachers"]["t8"]["shards"][1].update(owner="teachers/t4"),
                                   False, "logits", True),
    "attributes-dtype-bfloat16-for-float16": (_attribute_dtype, True, "logits", True),
    "int8-scale-negative": (_negative_int8_scale, False, "logits_int8", True),
    "views-normalisation": (_normalisation, False, "logits", False),
}  # fmt: skip
NOT_IN_VERIFY = {"views-normalisation": "verify has no dataset to replay the views from; training refuses it"}


def train_on(store: Path, dataset, target: str, views_given: bool) -> None:
    """What stage two does with the store: open it, build the dataset, read every sample's targets and decode them."""
    views = VIEWS if views_given else None
    data = CachedDataset(dataset, open_store(str(store)), teacher="t8", targets=[target], views=views)
    data[np.arange(len(dataset))].to("cpu")


@pytest.mark.parametrize("name", sorted(EDITS))
def test_a_resealed_record_is_refused_and_listed(name, tmp_path, two_teachers, digits_small):
    edit, everywhere, target, views_given = EDITS[name]
    store = Path(shutil.copytree(two_teachers, tmp_path / "store.zarr"))
    rewritten(store, edit, everywhere=everywhere)
    outcome = Outcome("resealed", name, note=NOT_IN_VERIFY.get(name, ""))
    try:
        train_on(store, digits_small, target, views_given)
    except KdcacheError as exc:
        outcome.detected = clear_error(exc, str(store))
        message = str(exc)
    else:
        outcome.silent_wrong, message = True, ""
    listed = verify_problems(str(store))
    if name in NOT_IN_VERIFY:
        assert listed == []  # stated, not hidden: verify cannot see this edit
    else:
        outcome.detected &= any(str(store) in line for line in listed)
    assert record(outcome).passed, (outcome, message, listed)


def test_the_unedited_store_trains_and_verifies_clean(two_teachers, digits_small):
    for target in ("logits", TOPK, "logits_int8"):
        train_on(two_teachers, digits_small, target, True)
    assert verify_problems(str(two_teachers)) == []
