"""Security: crafted pickle checkpoints do not execute, names cannot escape the store root, and only Zarr v3 metadata
with allow-listed codecs is decoded."""

from __future__ import annotations

import json
import pickle
from pathlib import Path

import pytest

from kdcache.checkpoint import load_state_dict
from kdcache.errors import CheckpointError, StoreFormatError, UnsafeNameError
from kdcache.precompute import precompute
from kdcache.store import open_cache
from kdcache.targets import build_target
from tests.faults.ledger import Outcome, clear_error, record


class Payload:
    """Unpickling this calls ``Path.touch`` on the marker: proof that code ran."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


def test_a_crafted_pickle_checkpoint_does_not_execute(tmp_path):
    marker = tmp_path / "pwned"
    checkpoint = tmp_path / "teacher.pt"
    checkpoint.write_bytes(pickle.dumps({"weight": Payload(marker)}))
    outcome = Outcome("security", "pickle-checkpoint")
    # torch warns that the crafted file uses pickle protocol 4 (its own default for weights_only is 2)
    with pytest.raises(CheckpointError) as raised, pytest.warns(UserWarning, match="Detected pickle protocol 4"):
        load_state_dict(checkpoint)
    outcome.detected = clear_error(raised.value, str(checkpoint), "never unpickles")
    outcome.silent_wrong = marker.exists()
    assert record(outcome).passed, outcome


UNSAFE = ["../escape", "/abs/teacher", "a/../../b", "sub\\dir", "", ".", "teacher/../../x"]


@pytest.mark.parametrize("name", UNSAFE)
def test_teacher_names_cannot_escape_the_store(tmp_path, teacher, digits_small, views, name):
    store = tmp_path / "root" / "store.zarr"
    outcome = Outcome("security", f"teacher-name {name!r}")
    with pytest.raises(UnsafeNameError) as raised:
        precompute(teacher, digits_small, store, targets=[build_target("logits", {})], views=views, num_classes=10,
                   teacher_name=name, progress=False)  # fmt: skip
    outcome.detected = clear_error(raised.value, "is not allowed")
    outcome.silent_wrong = any(p for p in tmp_path.rglob("*") if not str(p).startswith(str(tmp_path / "root")))
    assert record(outcome).passed, outcome


@pytest.mark.parametrize("layer", ["../../etc", "layer1/../../../x"])
def test_target_layer_names_cannot_escape_the_store(tmp_path, teacher, digits_small, views, layer):
    outcome = Outcome("security", f"layer-name {layer!r}")
    with pytest.raises(UnsafeNameError) as raised:
        precompute(teacher, digits_small, tmp_path / "store.zarr", targets=[build_target("features", {"layer": layer})],
                   views=views, num_classes=10, progress=False)  # fmt: skip
    outcome.detected = clear_error(raised.value, "is not allowed")
    assert record(outcome).passed, outcome


def rewrite_metadata(store: Path, edit) -> None:
    path = store / "teachers/t8/logits/zarr.json"
    meta = json.loads(path.read_text())
    edit(meta)
    path.write_text(json.dumps(meta))


def zarr_v2(meta: dict) -> None:
    meta["zarr_format"] = 2


def gzip_codec(meta: dict) -> None:
    meta["codecs"][0]["configuration"]["codecs"].insert(1, {"name": "gzip", "configuration": {"level": 1}})


def unknown_codec(meta: dict) -> None:
    meta["codecs"][0]["configuration"]["codecs"].append({"name": "numcodecs.pickle", "configuration": {}})


@pytest.mark.parametrize(("edit", "phrase"), [(zarr_v2, "zarr_format: store has 2, manifest pinned 3"),
                                              (gzip_codec, 'codecs[0].configuration.codecs[1].name: store has "gzip"'),
                                              (unknown_codec, '"numcodecs.pickle"')],
                         ids=["zarr-v2", "gzip", "pickle-codec"])  # fmt: skip
def test_only_zarr_v3_with_allow_listed_codecs_is_opened(store_copy, edit, phrase):
    rewrite_metadata(store_copy, edit)
    outcome = Outcome("security", f"metadata-{edit.__name__}")
    with pytest.raises(StoreFormatError) as raised:
        open_cache(str(store_copy))
    outcome.detected = clear_error(raised.value, str(store_copy), "teachers/t8/logits/zarr.json", phrase)
    assert record(outcome).passed, outcome
