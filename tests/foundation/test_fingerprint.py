"""Fingerprints: a canonical digest of JSON facts, stable across key order; differences named fact by fact; the
dataset and teacher fingerprints change with what they describe and nothing else."""

from __future__ import annotations

import copy

import torch

from kdcache.checkpoint import load_state_dict, save_model, state_digest
from kdcache.datasets import TensorDataset
from kdcache.datasets.fingerprint import dataset_fingerprint
from kdcache.fingerprint import canonical_digest, describe_difference, with_digest
from kdcache.models.fingerprint import teacher_fingerprint


def test_canonical_digest_ignores_key_order_and_pins_its_algorithm() -> None:
    assert canonical_digest({"b": [1, 2], "a": {"y": 1, "x": 2}}) == canonical_digest(
        {"a": {"x": 2, "y": 1}, "b": [1, 2]}
    )
    # sha256 of the compact sorted JSON '{"a":1}': a literal, so a change of encoding fails here
    assert canonical_digest({"a": 1}) == "015abd7f5cc57a2dd94b7590f04ad8084273905ee33ec5cebeae62276a97f862"


def test_differences_are_named_fact_by_fact() -> None:
    expected, found = with_digest({"length": 10, "split": "train"}), with_digest({"length": 12, "split": "train"})
    assert describe_difference(expected, found) == "length: store 12, now 10"
    assert describe_difference(expected, expected) == "digests differ"


def test_differences_walk_nested_specs_to_the_first_differing_leaf() -> None:
    """A view spec whose pipeline entries are nested dicts (class path + arguments): the message names the leaf,
    both values and how many other leaves differ, never the two whole specs."""
    step = {"class": "torchvision.transforms.v2:RandAugment", "args": {"num_ops": 2, "magnitude": 9}}
    store = with_digest({"count": 4, "transform": {"pipeline": [{"class": "v2:ToImage", "args": {}}, step]}})
    changed = copy.deepcopy(store)
    changed["transform"]["pipeline"][1]["args"].update(magnitude=5, num_ops=3)
    changed["transform"]["pipeline"].append({"class": "v2:RandomErasing", "args": {"p": 0.5}})
    changed["seed"] = 1
    assert describe_difference(changed, store) == (
        "transform.pipeline[1].args.num_ops: store 2, now 3 (and 3 more differences)"
    )
    assert describe_difference(changed, store, shown=4).split("; ")[1:] == [
        "transform.pipeline[1].args.magnitude: store 9, now 5",
        'transform.pipeline[2]: store absent, now {"args": {"p": 0.5}, "class": "v2:RandomErasing"}',
        "seed: store absent, now 1",
    ]
    assert describe_difference({"a": 1.0, "b": True}, {"a": 1, "b": 1}) == "a: store 1, now 1.0 (and 1 more difference)"


def _dataset(images: torch.Tensor) -> TensorDataset:
    return TensorDataset(images, torch.arange(len(images)) % 3, split="train", source={"kind": "test"})


def test_dataset_fingerprint_follows_content_labels_and_length() -> None:
    images = torch.rand(20, 1, 4, 4, generator=torch.Generator().manual_seed(0))
    base = dataset_fingerprint(_dataset(images), num_classes=3)
    assert base == dataset_fingerprint(_dataset(images.clone()), num_classes=3)
    changed = images.clone()
    changed[0, 0, 0, 0] += 0.5  # the first sample is always a content probe
    assert describe_difference(base, dataset_fingerprint(_dataset(changed), num_classes=3)).startswith("content_sha256")
    assert dataset_fingerprint(_dataset(images[:19]), num_classes=3)["length"] == 19
    relabelled = TensorDataset(images, torch.zeros(20, dtype=torch.long), split="train", source={"kind": "test"})
    assert "labels_sha256" in describe_difference(base, dataset_fingerprint(relabelled, num_classes=3))


def test_teacher_fingerprint_follows_the_weights_and_the_checkpoint_digest_matches(tmp_path) -> None:
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(4, 3))
    before = teacher_fingerprint(model, spec={"arch": "linear"}, layers=["0"])
    assert before == teacher_fingerprint(copy.deepcopy(model), spec={"arch": "linear"}, layers=["0"])
    path = save_model(model, tmp_path / "teacher.safetensors", spec={"arch": "linear"})
    assert state_digest(load_state_dict(path)) == before["state_sha256"]  # checkable without building the model
    with torch.no_grad():
        model[0].weight[0, 0] = torch.nextafter(model[0].weight[0, 0], torch.tensor(1.0))  # one ulp of float32
    after = teacher_fingerprint(model, spec={"arch": "linear"}, layers=["0"])
    assert after["state_sha256"] != before["state_sha256"] and after["digest"] != before["digest"]
