"""Loss values against hand-computed references, and cache-vs-live equality on the same batch."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from kdcache.losses import LossSetup, StepOutputs, build_objective, kd_divergence
from kdcache.precompute import precompute
from kdcache.store import open_cache
from kdcache.stream import CachedDataset, ViewDataset
from kdcache.train import LiveTeacher


def softmax(xs: list[float]) -> list[float]:
    exps = [math.exp(x) for x in xs]
    return [e / sum(exps) for e in exps]


def test_kd_matches_hand_computation():
    student, teacher, T = [1.0, 2.0, 3.0], [3.0, 2.0, 1.0], 2.0
    p = softmax([t / T for t in teacher])
    q = softmax([s / T for s in student])
    by_hand = T * T * sum(pi * math.log(pi / qi) for pi, qi in zip(p, q, strict=True))
    # p = softmax(1.5, 1, .5) and q is its mirror, so KL = (p0 - p2) · ln(p0 / p2) = p0 - p2 = 0.32016
    assert by_hand == pytest.approx(4 * 0.320157, abs=1e-5)
    value = kd_divergence(torch.tensor([student]), torch.tensor([teacher]), T)
    assert float(value) == pytest.approx(by_hand, rel=1e-6)


def test_kd_is_zero_for_equal_logits_and_averages_over_the_batch():
    a = torch.tensor([[0.5, -1.0, 2.0], [1.0, 1.0, 1.0]])
    assert float(kd_divergence(a, a, 3.0)) == pytest.approx(0.0, abs=1e-7)
    b = torch.tensor([[3.0, 2.0, 1.0], [1.0, 1.0, 1.0]])
    first = float(kd_divergence(a[:1], b[:1], 2.0))
    assert float(kd_divergence(a, b, 2.0)) == pytest.approx(first / 2, rel=1e-6)  # second row contributes 0


def test_objective_mixes_ce_and_kd_by_weight():
    logits = torch.tensor([[1.0, 2.0, 3.0]])
    labels = torch.tensor([0])
    teacher = torch.tensor([[3.0, 2.0, 1.0]])
    objective = build_objective([("ce", 0.1, {}), ("kd", 0.9, {"temperature": 2.0})], LossSetup(num_classes=3))
    total, parts = objective(StepOutputs(logits=logits, labels=labels, teacher={"logits": teacher}))
    ce = -math.log(softmax([1.0, 2.0, 3.0])[0])  # 2.4076
    assert parts["ce"] == pytest.approx(0.1 * ce, rel=1e-6)
    assert parts["kd"] == pytest.approx(0.9 * 1.280627, rel=1e-4)
    assert float(total) == pytest.approx(0.1 * ce + 0.9 * 1.280627, rel=1e-4)


def test_kd_ignores_masked_pixels_for_dense_outputs():
    student = torch.randn(2, 4, 3, 3)
    teacher = torch.randn(2, 4, 3, 3)
    labels = torch.zeros(2, 3, 3, dtype=torch.long)
    labels[0, 0, 0] = 255
    valid = labels != 255
    kd = build_objective([("kd", 1.0, {"temperature": 1.0})], LossSetup(num_classes=4, ignore_index=255))
    _, parts = kd(StepOutputs(logits=student, labels=labels, teacher={"logits": teacher}))
    assert parts["kd"] == pytest.approx(float(kd_divergence(student, teacher, 1.0, valid)), rel=1e-6)
    assert parts["kd"] != pytest.approx(float(kd_divergence(student, teacher, 1.0)), rel=1e-6)


def test_loss_from_cache_equals_loss_from_live_teacher(tmp_path, teacher, digits_small, views, logits_target):
    precompute(
        teacher,
        digits_small,
        tmp_path / "s.zarr",
        targets=[logits_target],
        views=views,
        num_classes=10,
        teacher_name="t8",
        shard_samples=128,
        progress=False,
    )
    cached = CachedDataset(
        digits_small, open_cache(str(tmp_path / "s.zarr")), teacher="t8", targets=["logits"], views=views
    )
    indices = np.array([299, 5, 140, 7, 128, 0, 64])
    batch = cached[indices].to("cpu")
    live = LiveTeacher(teacher, [logits_target], torch.device("cpu"))(ViewDataset(digits_small, views)[indices])
    torch.manual_seed(0)
    student_logits = torch.randn(len(indices), 10)
    objective = build_objective([("kd", 1.0, {"temperature": 4.0})], LossSetup(num_classes=10))
    from_cache, _ = objective(StepOutputs(student_logits, batch.labels, teacher=batch.targets))
    from_live, _ = objective(StepOutputs(student_logits, batch.labels, teacher=live))
    assert float(from_cache) == pytest.approx(float(from_live), rel=2e-3)  # fp16 storage of the logits
    torch.testing.assert_close(batch.targets["logits"], live["logits"], atol=2e-3, rtol=1e-3)
