"""Loss values against hand-computed references, and cache-vs-live equality on the same batch."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from kdcache.capture import LayerCapture, forward_with_capture
from kdcache.errors import ConfigError, TargetMismatchError
from kdcache.losses import (
    LossSetup,
    StepOutputs,
    build_objective,
    check_task_classes,
    kd_divergence,
    rkd_angles,
    rkd_distances,
    topk_kd_divergence,
)
from kdcache.models import DigitsCNN
from kdcache.targets import build_target
from kdcache.targets.ensemble import ProbabilityEnsemble
from kdcache.targets.logits import TopKLogits
from kdcache.train import LiveTeacher, ViewDataset
from tests.conftest import cache_digits, cached_dataset


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


def test_kd_refuses_a_teacher_of_another_width_naming_both():
    """Widths 5 and 10 gave a raw size-mismatch RuntimeError; now both widths and the fix are named."""
    student, teacher = torch.zeros(4, 5), torch.zeros(4, 10)
    with pytest.raises(
        TargetMismatchError,
        match=r"teacher's logits have 10 classes \(shape \(4, 10\)\), the "
        r"student's 5 \(shape \(4, 5\)\).*num_classes in student\.model\.args",
    ):
        kd_divergence(student, teacher, 4.0)
    with pytest.raises(TargetMismatchError, match=r"have 10 classes"):
        kd_divergence(student, ProbabilityEnsemble(torch.zeros(2, 4, 10)), 4.0)
    topk = TopKLogits(torch.zeros(4, 6), torch.zeros(4, 6, dtype=torch.long), torch.zeros(4, 1), (1.0,))
    with pytest.raises(TargetMismatchError, match=r"keeps 6 classes per sample, more than the student's 5"):
        kd_divergence(student, topk, 1.0)
    with pytest.raises(TargetMismatchError, match=r"is a dict, not decoded logits"):
        kd_divergence(student, {"logits": torch.zeros(4, 5)}, 4.0)


@pytest.mark.parametrize(
    ("logits", "labels", "message"),
    [
        (
            torch.zeros(3, 5),
            torch.tensor([0, 1, 2]),
            r"the student outputs 5 classes .* build the student with "
            r"num_classes=10 \(a pipeline passes data.num_classes",
        ),
        (torch.zeros(3, 10), torch.tensor([0, -100, 12]), r"the labels reach class 12, but the task has 10 classes"),
    ],
    ids=["student-width", "label-past-classes"],
)
def test_a_student_or_labels_that_do_not_fit_the_class_count_are_refused(logits, labels, message):
    setup = LossSetup(num_classes=10)
    with pytest.raises(ConfigError, match=message):
        check_task_classes(logits, labels, setup)
    if logits.shape[1] != 10:  # the ce term checks the width itself: cross-entropy raised IndexError here
        with pytest.raises(ConfigError, match=message):
            build_objective([("ce", 1.0, {})], setup)(StepOutputs(logits=logits, labels=labels))
    check_task_classes(torch.zeros(3, 10), torch.tensor([9, -100, 0]), setup)  # fits: ignore_index is no class
    check_task_classes(torch.zeros(2, 7, 10), torch.tensor([[9] * 7] * 2), LossSetup(10, task="language-model"))


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
    cache_digits(tmp_path / "s.zarr", teacher, digits_small, views, [logits_target])
    cached = cached_dataset(tmp_path / "s.zarr", digits_small, views, ["logits"])
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


# ---------------------------------------------------------------------------------------------- top-k KD
def test_topk_kd_by_hand_with_a_tail_bin():
    teacher_logits = torch.tensor([[2.0, 1.0, 0.0]])
    student = torch.tensor([[0.0, 1.0, 2.0]])
    topk = build_target("logits", {"encoding": "topk", "k": 1, "temperatures": [1.0], "dtype": "float32"})
    cached = topk.decode({k: torch.from_numpy(v) for k, v in topk.encode(teacher_logits).items()})
    p = softmax([2.0, 1.0, 0.0])
    q = softmax([0.0, 1.0, 2.0])
    bins_p, bins_q = [p[0], p[1] + p[2]], [q[0], q[1] + q[2]]  # class 0, then everything else
    by_hand = sum(a * math.log(a / b) for a, b in zip(bins_p, bins_q, strict=True))
    # ln(p0/q0) = 2 and ln((p1+p2)/(q1+q2)) = -1 exactly, so KL = 2·p0 - (1 - p0) = 3·0.665241 - 1
    assert by_hand == pytest.approx(3 * 0.665241 - 1, abs=1e-5)
    assert float(topk_kd_divergence(student, cached, 1.0)) == pytest.approx(by_hand, rel=1e-5)


@pytest.mark.parametrize("dtype", ["float32", "float16", "bfloat16"])
def test_topk_with_k_equal_to_class_count_equals_dense(dtype):
    """Stored at any precision, top-k with k = C is dense KD on the stored logits: the log-sum-exp is taken over
    the rounded values, so the probabilities sum to 1 (they summed to 0.987 for bfloat16 before format 2)."""
    torch.manual_seed(0)
    teacher_logits, student = torch.randn(16, 7) * 3, torch.randn(16, 7)
    for temperature in (1.0, 4.0):
        topk = build_target("logits", {"encoding": "topk", "k": 7, "temperatures": [temperature], "dtype": dtype})
        dense = build_target("logits", {"dtype": dtype})
        cached = topk.decode({k: torch.from_numpy(v) for k, v in topk.encode(teacher_logits).items()})
        stored = dense.decode({k: torch.from_numpy(v) for k, v in dense.encode(teacher_logits).items()})
        probabilities = (cached.values / temperature - cached.lse_at(temperature)[:, None]).exp().sum(dim=1)
        torch.testing.assert_close(probabilities, torch.ones(16), rtol=0, atol=1e-6)
        expected = float(kd_divergence(student, stored, temperature))
        assert float(topk_kd_divergence(student, cached, temperature)) == pytest.approx(expected, rel=1e-5)


# ---------------------------------------------------------------------------------------------- feature losses
def test_fsp_loss_is_the_weighted_mean_of_squared_distances():
    a = torch.ones(2, 1, 2, 2)
    b = torch.ones(2, 2, 2, 2)  # student G = [[1, 1]] for both pairs' students below
    teacher = {"fsp/x__y": torch.tensor([[[0.0, 1.0]]]).repeat(2, 1, 1), "fsp/y__y": torch.zeros(2, 2, 2)}
    loss = build_objective(
        [("fsp", 1.0, {"pairs": [["x", "y"], ["y", "y"]], "weights": [3.0, 1.0]})], LossSetup(num_classes=2)
    )
    _, parts = loss(StepOutputs(torch.zeros(2, 2), torch.zeros(2, dtype=torch.long), {"x": a, "y": b}, teacher))
    # pair x,y: ‖[1,1] - [0,1]‖² = 1; pair y,y: ‖ones(2,2)‖² = 4; weighted mean (3·1 + 1·4) / 4
    assert parts["fsp"] == pytest.approx(7 / 4)


def test_hint_without_regressor_is_mse_and_regressor_is_created_for_other_widths():
    student, teacher = torch.zeros(1, 2, 2, 2), torch.ones(1, 2, 2, 2)
    hint = build_objective([("hint", 1.0, {"target": "features/h", "student_layer": "s"})], LossSetup(num_classes=2))
    out = StepOutputs(torch.zeros(1, 2), torch.zeros(1, dtype=torch.long), {"s": student}, {"features/h": teacher})
    hint.prepare(out)
    assert hint.terms["hint"].regressor is None and hint(out)[1]["hint"] == pytest.approx(1.0)
    wide = StepOutputs(out.logits, out.labels, {"s": torch.zeros(1, 3, 4, 4)}, {"features/h": teacher})
    hint.prepare(wide)
    regressor = hint.terms["hint"].regressor
    assert isinstance(regressor, torch.nn.Conv2d) and (regressor.in_channels, regressor.out_channels) == (3, 2)
    assert len(list(hint.parameters())) == 2  # the regressor's weight and bias are trained with the student


def test_feature_kd_kl_mode_is_pixelwise_kd_after_resizing():
    torch.manual_seed(1)
    student, teacher = torch.randn(2, 4, 2, 2), torch.randn(2, 4, 4, 4)
    loss = build_objective([("feature_kd", 1.0, {"target": "features/aux", "temperature": 2.0})], LossSetup(4))
    _, parts = loss(
        StepOutputs(torch.zeros(2, 4), torch.zeros(2, dtype=torch.long), {"aux": student}, {"features/aux": teacher})
    )
    resized = torch.nn.functional.interpolate(student, size=(4, 4), mode="bilinear", align_corners=False)
    assert parts["feature_kd"] == pytest.approx(float(kd_divergence(resized, teacher, 2.0)), rel=1e-6)
    smooth = build_objective([("feature_kd", 1.0, {"target": "features/aux", "mode": "smooth_l1"})], LossSetup(4))
    same = StepOutputs(
        torch.zeros(2, 4), torch.zeros(2, dtype=torch.long), {"aux": teacher + 0.5}, {"features/aux": teacher}
    )
    assert smooth(same)[1]["feature_kd"] == pytest.approx(0.5 * 0.5**2)  # |d| < 1: 0.5·d²


# ---------------------------------------------------------------------------------------------- relation losses
def test_rkd_distance_and_angle_by_hand():
    right_angle = torch.tensor([[0.0, 0.0], [1.0, 0.0], [0.0, 1.0]])
    d = rkd_distances(right_angle)
    mean = (1 + 1 + math.sqrt(2)) / 3  # mean of the three distinct pairwise distances
    assert float(d[0, 1]) == pytest.approx(1 / mean) and float(d[1, 2]) == pytest.approx(math.sqrt(2) / mean)
    a = rkd_angles(right_angle)
    assert float(a[0, 1, 2]) == pytest.approx(0.0, abs=1e-6)  # angle at point 0 between 1 and 2 is 90°
    assert float(a[1, 0, 2]) == pytest.approx(math.cos(math.pi / 4))  # angle at point 1 is 45°
    scaled = build_objective(
        [
            ("rkd_distance", 1.0, {"target": "embedding/e", "student_layer": "e"}),
            ("rkd_angle", 1.0, {"target": "embedding/e", "student_layer": "e"}),
        ],
        LossSetup(2),
    )
    out = StepOutputs(
        torch.zeros(3, 2), torch.zeros(3, dtype=torch.long), {"e": 5 * right_angle + 1}, {"embedding/e": right_angle}
    )
    _, parts = scaled(out)  # relations are invariant to scaling and translation
    assert parts["rkd_distance"] == pytest.approx(0.0, abs=1e-10) and parts["rkd_angle"] == pytest.approx(
        0.0, abs=1e-10
    )


# ---------------------------------------------------------------------------------------------- cache == live
LOSS_CASES = [
    ("logits", {}, ("kd", {"temperature": 4.0})),
    (
        "logits",
        {"encoding": "topk", "k": 4, "temperatures": [4.0]},
        ("kd", {"temperature": 4.0, "target": "logits_topk"}),
    ),
    ("logits", {"encoding": "int8"}, ("kd", {"temperature": 4.0, "target": "logits_int8"})),
    ("fsp", {"layers": ["layer1", "layer2"]}, ("fsp", {"pairs": [["layer1", "layer2"]]})),
    ("features", {"layer": "layer2"}, ("hint", {"target": "features/layer2"})),
    ("features", {"layer": "layer3"}, ("feature_kd", {"target": "features/layer3", "mode": "smooth_l1"})),
    ("embedding", {"layer": "pool"}, ("rkd_distance", {"target": "embedding/pool"})),
    ("embedding", {"layer": "pool"}, ("rkd_angle", {"target": "embedding/pool"})),
]


@pytest.mark.parametrize(
    ("kind", "target_params", "loss"),
    LOSS_CASES,
    ids=["kd", "kd-topk", "kd-int8", "fsp", "hint", "feature-smoothl1", "rkd-distance", "rkd-angle"],
)
def test_every_loss_from_the_cache_equals_the_loss_from_the_live_teacher(
    tmp_path, teacher, digits_small, views, kind, target_params, loss
):
    target = build_target(kind, target_params)
    cache_digits(tmp_path / "s.zarr", teacher, digits_small, views, [target])
    cached = cached_dataset(tmp_path / "s.zarr", digits_small, views, [target.name])
    indices = np.array([299, 5, 140, 7, 128, 0, 64, 31])
    batch = cached[indices].to("cpu")
    live_value = LiveTeacher(teacher, [target], torch.device("cpu"))(ViewDataset(digits_small, views)[indices])[
        target.name
    ]
    # the live teacher's value through the same encoding, without the store: what an online run with this encoding sees
    live = target.decode({k: torch.from_numpy(v) for k, v in target.encode(live_value).items()})

    torch.manual_seed(0)
    student = DigitsCNN(10, width=8).eval()  # same widths as the teacher, other weights
    objective = build_objective([(loss[0], 1.0, loss[1])], LossSetup(num_classes=10))
    with LayerCapture(student, objective.student_layers()) as capture, torch.no_grad():
        outputs = forward_with_capture(student, batch.inputs, capture)
        step = StepOutputs(outputs.logits, batch.labels, outputs.features, {target.name: batch.targets[target.name]})
        objective.prepare(step)
        from_cache, _ = objective(step)
        from_live, _ = objective(StepOutputs(outputs.logits, batch.labels, outputs.features, {target.name: live}))
        from_raw, _ = objective(StepOutputs(outputs.logits, batch.labels, outputs.features, {target.name: live_value}))
    assert float(from_cache) > 0
    assert float(from_cache) == pytest.approx(float(from_live), rel=1e-6, abs=1e-7)  # the store adds no error
    if target_params.get("encoding") != "topk":  # top-k is a different loss by design; the rest round values only
        assert float(from_cache) == pytest.approx(float(from_raw), rel=2e-2)
