"""Several teachers in one store: a second teacher leaves the first untouched; stage two learns from an ensemble."""

from __future__ import annotations

import math
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from kdcache.errors import ConfigError, StoreMismatchError
from kdcache.losses import kd_divergence
from kdcache.pipeline import parse_pipeline
from kdcache.pipeline.build import load_split, view_transform
from kdcache.pipeline.distill import run_precompute, train_student
from kdcache.store import open_store, read_manifest
from kdcache.store.location import StoreLocation
from kdcache.targets.ensemble import Ensemble, ProbabilityEnsemble
from kdcache.train import CachedDataset
from tests.conftest import DIGITS, pipeline_dict, with_changes
from tests.helpers import store_files

NAMES = ("cnn16", "cnn8")


@pytest.fixture(scope="module")
def two_teachers(tmp_path_factory) -> SimpleNamespace:
    """A complete store of teacher cnn16, then teacher cnn8 added to it (with the store's shard size adopted)."""
    root = tmp_path_factory.mktemp("teachers")
    raw = pipeline_dict(root, data__args={"path": str(DIGITS)})
    first = parse_pipeline(raw)
    run_precompute(first, progress=False)
    store = Path(first.store_url)
    before = SimpleNamespace(files=store_files(store), manifest=read_manifest(StoreLocation(store)))
    second = with_changes(
        raw,
        teacher__name="cnn8",
        teacher__model={"arch": "digits-cnn", "args": {"width": 8}},
        teacher__checkpoint=str(root / "teacher8.safetensors"),
        cache__shard_samples=None,
    )
    report = run_precompute(parse_pipeline(second), progress=False)
    return SimpleNamespace(raw=raw, store=store, before=before, report=report)


def test_second_teacher_leaves_the_first_untouched(two_teachers):
    report, before = two_teachers.report, two_teachers.before
    assert (report.teacher, report.shards_written, report.complete) == ("cnn8", 2, True)
    after_files = store_files(two_teachers.store)
    changed = {k for k in before.files if after_files[k] != before.files[k]}
    assert changed == {"zarr.json", "kdcache.manifest.json"}  # group attributes list the teachers; nothing else
    assert {k for k in after_files if k not in before.files} == {
        k for k in after_files if k.startswith("teachers/cnn8/")
    }
    after = read_manifest(StoreLocation(two_teachers.store))
    assert after.teachers["cnn16"] == before.manifest.teachers["cnn16"]
    assert after.samples == before.manifest.samples
    assert after.status == "complete" and after.teachers["cnn8"].status == "complete"
    assert after.shard_samples == 128  # adopted from the store although the second run did not set it


@pytest.fixture(scope="module")
def batches(two_teachers):
    """The same samples read with each teacher alone and with both as an ensemble in either mode."""
    cfg = parse_pipeline(two_teachers.raw)
    train, views, cache = load_split(cfg, "train"), view_transform(cfg), open_store(str(two_teachers.store))
    order = np.array([5, 200, 17, 130, 5])

    def targets(teacher):
        data = CachedDataset(train, cache, teacher=teacher, targets=["logits"], views=views)
        return data[order].to("cpu").targets["logits"]

    return SimpleNamespace(
        single=[targets(name) for name in NAMES],
        logits=targets(Ensemble(NAMES, "logits")),
        probs=targets(Ensemble(NAMES, "probs")),
    )


def test_ensemble_targets_combine_the_members(batches):
    a, b = batches.single
    assert not torch.equal(a, b)
    torch.testing.assert_close(batches.logits, (a + b) / 2, rtol=0, atol=0)
    assert isinstance(batches.probs, ProbabilityEnsemble)
    torch.testing.assert_close(batches.probs.members, torch.stack([a, b]), rtol=0, atol=0)


def test_kd_on_a_probability_ensemble_uses_the_mean_of_the_softened_members(batches):
    a, b = (x.double().numpy() for x in batches.single)
    student = torch.randn(a.shape, generator=torch.Generator().manual_seed(0))
    for temperature in (1.0, 4.0):
        p = (_softmax(a / temperature) + _softmax(b / temperature)) / 2
        log_q = np.log(_softmax(student.double().numpy() / temperature))
        expected = temperature**2 * (p * (np.log(p) - log_q)).sum(1).mean()
        got = kd_divergence(student, batches.probs, temperature)
        assert float(got) == pytest.approx(expected, rel=1e-5)


def _softmax(z: np.ndarray) -> np.ndarray:
    e = np.exp(z - z.max(1, keepdims=True))
    return e / e.sum(1, keepdims=True)


def test_kd_against_hand_computed_ensemble_values():
    """Two classes; teachers z1 = (0, 0) and z2 = (ln 3, 0); the student is uniform, so KL = Σ p ln(2p)."""
    members = torch.tensor([[[0.0, 0.0]], [[math.log(3), 0.0]]])
    student = torch.zeros(1, 2)
    # probs, T = 1: p = ((1/2 + 3/4) / 2, (1/2 + 1/4) / 2) = (5/8, 3/8)
    probs_t1 = 5 / 8 * math.log(5 / 4) + 3 / 8 * math.log(3 / 4)
    assert float(kd_divergence(student, ProbabilityEnsemble(members), 1.0)) == pytest.approx(probs_t1, rel=1e-5)
    # probs, T = 2: z2 / 2 = (ln √3, 0) gives (√3/(1+√3), 1/(1+√3)); averaged with (1/2, 1/2); times T² = 4
    r = math.sqrt(3) / (1 + math.sqrt(3))
    p = ((0.5 + r) / 2, (0.5 + 1 - r) / 2)
    probs_t2 = 4 * sum(x * math.log(2 * x) for x in p)
    assert float(kd_divergence(student, ProbabilityEnsemble(members), 2.0)) == pytest.approx(probs_t2, rel=1e-5)
    # logits, T = 1: the mean logits (ln √3, 0) give the same (√3/(1+√3), 1/(1+√3)): a geometric mean
    logits_t1 = r * math.log(2 * r) + (1 - r) * math.log(2 * (1 - r))
    assert float(kd_divergence(student, members.mean(0), 1.0)) == pytest.approx(logits_t1, rel=1e-5)
    assert probs_t1 == pytest.approx(0.0315839, abs=1e-7) and logits_t1 == pytest.approx(0.0363408, abs=1e-7)


@pytest.mark.parametrize("mode", ["logits", "probs"])
def test_student_trains_from_an_ensemble(two_teachers, mode):
    raw = with_changes(two_teachers.raw, teacher__ensemble={"members": list(NAMES), "mode": mode})
    raw["compare"] = ["scratch", "cached"]
    raw["student"]["train"]["stages"][0]["epochs"] = 8
    run = train_student(parse_pipeline(raw), "cached", progress=False)
    assert run.metrics["accuracy"] >= 0.55  # measured 59.17% in both modes (scratch: 51.67%)


def test_ensemble_needs_the_cached_variant_and_known_members(two_teachers):
    raw = with_changes(two_teachers.raw, teacher__ensemble={"members": ["cnn16", "ghost"]})
    with pytest.raises(ConfigError, match=r"'online' variant.*set compare: \[scratch, cached\]"):
        parse_pipeline(raw)
    raw["compare"] = ["cached"]
    cfg = parse_pipeline(raw)
    with pytest.raises(ConfigError, match=r"online variant runs the one live teacher"):
        train_student(cfg, "online", progress=False)
    with pytest.raises(StoreMismatchError, match=r"no teacher 'ghost'; it holds \['cnn16', 'cnn8'\]"):
        train_student(cfg, "cached", progress=False)
    with pytest.raises(ConfigError, match=r"members must be distinct"):
        parse_pipeline(with_changes(raw, teacher__ensemble={"members": ["cnn16", "cnn16"]}))


def test_a_store_made_in_python_fits_a_pipeline_run_of_the_same_weights(tmp_path, digits_small):
    """The weights decide (every tensor's name, shape, dtype and bytes), not how the architecture was written down:
    a Python run records the class, a pipeline its arch and args."""
    from kdcache import ViewTransform, build_target, precompute
    from kdcache.checkpoint import state_digest
    from kdcache.errors import StoreMismatchError
    from kdcache.models import DigitsCNN
    from kdcache.store import Requirements, open_store

    torch.manual_seed(0)
    teacher = DigitsCNN(10, width=2).eval()
    store = str(tmp_path / "store.zarr")
    precompute(
        teacher,
        digits_small,
        store,
        targets=[build_target("logits", {})],
        views=ViewTransform(count=1, seed=0),
        teacher_name="t2",
        progress=False,
    )
    cache = open_store(store)
    spec = {"arch": "digits-cnn", "args": {"width": 2}, "num_classes": 10}
    weights = state_digest(teacher.state_dict())
    cache.require(Requirements(teachers=("t2",), teacher_spec=spec, teacher_state=weights))  # accepted
    with pytest.raises(StoreMismatchError, match="weights: the checkpoint hashes to"):
        cache.require(Requirements(teachers=("t2",), teacher_spec=spec, teacher_state="0" * 64))
    with pytest.raises(StoreMismatchError, match="architecture"):  # no weights to prove it: the description decides
        cache.require(Requirements(teachers=("t2",), teacher_spec=spec))
