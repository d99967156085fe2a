"""`kdcache stats` (dask over the zarr arrays) agrees with a direct numpy computation on a small store."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import zarr
from torch import nn

from kdcache.targets import build_target
from kdcache.tools.stats import report_stats, store_stats
from kdcache.views import ViewTransform
from tests.conftest import MEAN, STD, cache_digits


def linear_teacher(dataset, views, seed: int, steps: int) -> nn.Module:
    """A linear classifier trained by a few full-batch SGD steps: more steps, higher accuracy and confidence, so the
    three teachers below spread over many calibration bins."""
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Flatten(), nn.Linear(64, 10))
    raw, labels = dataset.get_batch(np.arange(len(dataset)))
    inputs = views(raw, None, None)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    for _ in range(steps):
        loss = nn.functional.cross_entropy(model(inputs), labels)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return model.eval()


TEACHERS = [("fp16", 0, 10, "float16"), ("bf16", 1, 30, "bfloat16"), ("fp32", 2, 60, "float32")]


@pytest.fixture(scope="module")
def store(tmp_path_factory, digits_small):
    """300 digits, 2 views each, three teachers stored as float16, bfloat16 and float32 logits."""
    path = tmp_path_factory.mktemp("stats") / "train.zarr"
    views = ViewTransform(count=2, seed=0, mean=MEAN, std=STD)
    for name, seed, steps, dtype in TEACHERS:
        teacher = linear_teacher(digits_small, views, seed, steps)
        cache_digits(path, teacher, digits_small, views, [build_target("logits", {"dtype": dtype})], teacher_name=name)
    return path


def numpy_stats(store, teacher: str, temperature: float, bins: int = 15) -> dict:
    """The same statistics written out directly over the whole arrays, bin by bin and class by class."""
    group = zarr.open_group(str(store), mode="r")
    raw = group[f"teachers/{teacher}/logits"][:]
    logits = (raw.view(np.uint16).astype(np.uint32) << 16).view(np.float32) if raw.dtype == np.uint16 else raw
    z = logits.astype(np.float64).reshape(-1, 10) / temperature
    labels = np.repeat(group["samples/label"][:], 2)
    p = np.exp(z - z.max(1, keepdims=True))
    p /= p.sum(1, keepdims=True)
    conf, correct = p.max(1), p.argmax(1) == labels
    ece = 0.0
    for m in range(bins):
        lo, hi = m / bins, (m + 1) / bins
        members = (conf > lo) & (conf <= hi) if m else (conf <= hi)
        if members.any():
            ece += members.sum() / len(z) * abs(correct[members].mean() - conf[members].mean())
    return {
        "accuracy": correct.mean(),
        "mean_entropy": -(p * np.log(p)).sum(1).mean(),
        "ece": ece,
        "per_class_accuracy": [correct[labels == c].mean() for c in range(10)],
        "top_k_mass": {k: np.sort(p, 1)[:, -k:].sum(1).mean() for k in (1, 5)},
        "pairs": len(z),
    }


@pytest.mark.parametrize("temperature", [1.0, 2.5], ids=["T1", "T2.5"])
def test_stats_equal_a_direct_numpy_computation(store, temperature):
    stats = {s.teacher: s for s in store_stats(str(store), temperature=temperature, progress=False)}
    assert sorted(stats) == ["bf16", "fp16", "fp32"]
    for name, s in stats.items():
        expected = numpy_stats(store, name, temperature)
        assert s.pairs == expected["pairs"] == 600
        assert s.accuracy == pytest.approx(expected["accuracy"], abs=1e-12)
        assert s.mean_entropy == pytest.approx(expected["mean_entropy"], rel=1e-9)
        assert s.ece == pytest.approx(expected["ece"], rel=1e-9)
        assert s.per_class_accuracy == pytest.approx(expected["per_class_accuracy"], abs=1e-12)
        assert s.top_k_mass == pytest.approx(expected["top_k_mass"], rel=1e-9)
        assert sum(b.count for b in s.bins) == 600 and len(s.bins) == 15
    filled = {b.lower for s in stats.values() for b in s.bins if b.count}
    assert len(filled) >= 7  # the three teachers exercise about half of the 15 bins or more
    assert stats["fp16"].accuracy < stats["bf16"].accuracy < stats["fp32"].accuracy


def test_float32_stats_accuracy_equals_the_manifest_accuracy(store):
    """The manifest's accuracy comes from the live float32 logits; float32 storage is exact, so they agree (rounded
    float16/bfloat16 logits may flip a near-tie's arg-max)."""
    from kdcache.store import open_store

    cache = open_store(str(store))
    (fp32,) = [s for s in store_stats(cache, progress=False) if s.teacher == "fp32"]
    assert fp32.accuracy == pytest.approx(cache.teacher("fp32").accuracy, abs=1e-12)


def test_report_writes_json_and_a_reliability_png(store, tmp_path, capsys):
    stats = report_stats(str(store), tmp_path / "out", progress=False)
    printed = capsys.readouterr().out
    assert "ECE (15 bins)" in printed and "top-5 mass" in printed and "per-class accuracy" in printed
    saved = json.loads((tmp_path / "out" / "stats.json").read_text())
    assert [t["teacher"] for t in saved["teachers"]] == [s.teacher for s in stats]
    assert saved["teachers"][0]["ece"] == pytest.approx(stats[0].ece)
    assert (tmp_path / "out" / "reliability.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_bad_temperature_is_a_config_error(store):
    from kdcache.errors import ConfigError

    with pytest.raises(ConfigError, match=r"temperature > 0.*T=0"):
        store_stats(str(store), temperature=0, progress=False)
