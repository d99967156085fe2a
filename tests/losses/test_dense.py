"""Segmentation losses by hand (CE and aux CE on upsampled logits, pixel-wise KD at native resolution, aux-map
distillation), ignore_index everywhere, and cache-vs-live equality for PSPNet's dense targets on a real store."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from kdcache.capture import LayerCapture, forward_with_capture
from kdcache.datasets import DigitsSegmentation
from kdcache.losses import LossSetup, StepOutputs, build_objective
from kdcache.losses.dense import labelled_positions
from kdcache.models import PSPNet
from kdcache.precompute import precompute
from kdcache.store import open_store
from kdcache.targets import build_target
from kdcache.train import CachedDataset, LiveTeacher, ViewDataset
from kdcache.views import ViewTransform

SEG = LossSetup(num_classes=3, ignore_index=255, task="segmentation")


def log_softmax(xs: list[float]) -> list[float]:
    top = math.log(sum(math.exp(x) for x in xs))
    return [x - top for x in xs]


def kl(teacher: list[float], student: list[float], t: float) -> float:
    """T² · KL(softmax(teacher/T) ‖ softmax(student/T)) for one position, by hand."""
    lp, lq = log_softmax([x / t for x in teacher]), log_softmax([x / t for x in student])
    return t * t * sum(math.exp(a) * (a - b) for a, b in zip(lp, lq, strict=True))


def test_ce_of_main_and_aux_heads_upsample_native_logits_and_skip_ignored_pixels():
    main = torch.tensor([1.0, 2.0, 0.5]).view(1, 3, 1, 1)  # one native position: upsampled, every pixel equal
    aux = torch.tensor([0.0, 0.0, 3.0]).view(1, 3, 1, 1)
    labels = torch.tensor([[[0, 1], [255, 2]]])
    objective = build_objective([("ce", 1.0, {}), ("ce", 0.4, {"student_layer": "aux"})], SEG)
    assert objective.student_layers() == ["aux"]
    _, parts = objective(StepOutputs(main, labels, {"aux": aux}))
    lm, la = log_softmax([1.0, 2.0, 0.5]), log_softmax([0.0, 0.0, 3.0])
    assert parts["ce"] == pytest.approx(-(lm[0] + lm[1] + lm[2]) / 3, rel=1e-6)  # three labelled pixels
    assert parts["ce#1"] == pytest.approx(-0.4 * (la[0] + la[1] + la[2]) / 3, rel=1e-6)


def test_labelled_positions_keep_a_cell_unless_all_its_pixels_are_ignored():
    labels = torch.zeros(1, 4, 4, dtype=torch.long)
    labels[0, :2, :2] = 255  # top-left cell entirely void
    labels[0, 0, 2] = 255  # top-right cell partly void
    assert labelled_positions(labels, (2, 2), 255).tolist() == [[[False, True], [True, True]]]
    assert torch.equal(labelled_positions(labels, (4, 4), 255), labels != 255)  # label resolution: pixel by pixel


def test_pixelwise_kd_is_at_native_resolution_and_masks_void_cells():
    torch.manual_seed(0)
    student, teacher = torch.randn(1, 3, 2, 2), torch.randn(1, 3, 2, 2)
    labels = torch.zeros(1, 4, 4, dtype=torch.long)
    labels[0, :2, :2] = 255
    kd = build_objective([("kd", 1.0, {"temperature": 2.0})], SEG)
    _, parts = kd(StepOutputs(student, labels, teacher={"logits": teacher}))
    kept = [(0, 1), (1, 0), (1, 1)]
    by_hand = sum(kl(teacher[0, :, i, j].tolist(), student[0, :, i, j].tolist(), 2.0) for i, j in kept) / 3
    assert parts["kd"] == pytest.approx(by_hand, rel=1e-5)
    void = torch.full((1, 4, 4), 255)
    total, _ = kd(StepOutputs(student.requires_grad_(), void, teacher={"logits": teacher}))
    assert float(total.detach()) == 0.0 and total.requires_grad  # nothing labelled: no signal, and no NaN


def test_aux_map_distillation_by_hand_in_both_modes_with_void_cells_masked():
    student, teacher = torch.zeros(1, 3, 2, 2), torch.zeros(1, 3, 2, 2)
    teacher[0, 0] = torch.tensor([[0.5, 2.0], [0.0, 0.0]])  # channel 0 differs at the two top cells
    labels = torch.zeros(1, 4, 4, dtype=torch.long)
    labels[0, :2, :2] = 255  # ... and the top-left cell is void
    out = StepOutputs(torch.zeros(1, 3, 2, 2), labels, {"aux": student}, {"features/aux": teacher})
    smooth = build_objective([("feature_kd", 1.0, {"target": "features/aux", "mode": "smooth_l1"})], SEG)
    # kept: 3 cells x 3 channels = 9 elements, one of them off by 2.0 (|d| >= 1: |d| - 0.5)
    assert smooth(out)[1]["feature_kd"] == pytest.approx((2.0 - 0.5) / 9)
    kl_loss = build_objective([("feature_kd", 1.0, {"target": "features/aux", "temperature": 4.0})], SEG)
    assert kl_loss(out)[1]["feature_kd"] == pytest.approx(kl([2.0, 0.0, 0.0], [0.0, 0.0, 0.0], 4.0) / 3, rel=1e-5)


# ---------------------------------------------------------------------------------------------- cache == live
@pytest.fixture(scope="module")
def seg_store(tmp_path_factory):
    """A PSPNet-ResNet50 teacher's native logits and aux-head maps for 48 digit canvases, fp16 + zstd."""
    data = DigitsSegmentation("train", train_samples=48, size=32, scale=(10, 14))
    views = ViewTransform(count=1, seed=0, mean=(0.06,), std=(0.19,))
    torch.manual_seed(0)
    teacher = PSPNet(11, backbone="resnet50", width=4, in_channels=1).eval()
    targets = [
        build_target("logits", {"dtype": "float16", "compressor": "zstd"}),
        build_target("features", {"layer": "aux", "dtype": "float16", "compressor": "zstd"}),
    ]
    path = tmp_path_factory.mktemp("seg") / "s.zarr"
    precompute(teacher, data, path, targets=targets, views=views, num_classes=11, shard_samples=64, progress=False)
    cached = CachedDataset(
        data, open_store(str(path)), teacher="teacher", targets=[t.name for t in targets], views=views
    )
    return data, views, teacher, targets, cached


def test_dense_targets_are_stored_native_fp16_and_compressed(seg_store):
    *_, cached = seg_store
    arrays = {rel: reader.record for arrays in cached.readers.values() for rel, reader in arrays.items()}
    for rel in ("logits", "features/aux"):
        assert arrays[rel].shape == [48, 1, 11, 4, 4] and arrays[rel].dtype == "float16"
        assert arrays[rel].compressor == "zstd"


LOSSES = [
    ("kd", {"temperature": 4.0}),
    ("feature_kd", {"target": "features/aux", "mode": "kl", "temperature": 4.0}),
    ("feature_kd", {"target": "features/aux", "mode": "smooth_l1"}),
]


@pytest.mark.parametrize(("name", "params"), LOSSES, ids=["logits-kd", "aux-kl", "aux-smoothl1"])
def test_dense_loss_from_the_cache_equals_the_loss_from_the_live_teacher(seg_store, name, params):
    data, views, teacher, targets, cached = seg_store
    indices = np.array([47, 3, 20, 0, 33, 9])
    batch = cached[indices].to("cpu")
    live = LiveTeacher(teacher, targets, torch.device("cpu"))(ViewDataset(data, views)[indices])
    through_encoding = {
        t.name: t.decode({k: torch.from_numpy(v) for k, v in t.encode(live[t.name]).items()}) for t in targets
    }
    torch.manual_seed(1)
    student = PSPNet(11, backbone="resnet18", width=4, in_channels=1).eval()
    objective = build_objective([(name, 1.0, params)], LossSetup(11, ignore_index=255, task="segmentation"))
    with LayerCapture(student, objective.student_layers()) as capture, torch.no_grad():
        outputs = forward_with_capture(student, batch.inputs, capture)
        value = {
            source: float(objective(StepOutputs(outputs.logits, batch.labels, outputs.features, teacher))[0])
            for source, teacher in (("cache", batch.targets), ("encoded", through_encoding), ("live", live))
        }
    assert value["cache"] > 0
    assert value["cache"] == pytest.approx(value["encoded"], rel=1e-6, abs=1e-7)  # the store adds no error
    assert value["cache"] == pytest.approx(value["live"], rel=2e-3)  # fp16 storage against the float32 teacher
