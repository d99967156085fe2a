"""Replayable views: keyed parameters, ops with known pixel effects, the eval view, the spec and its validation."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from kdcache.errors import ConfigError
from kdcache.pipeline import parse_pipeline
from kdcache.pipeline.build import eval_views, view_transform
from kdcache.views import EVAL_VIEW, KeyedRandom, ViewTransform, build_transform, build_view_op
from tests.conftest import MEAN, STD, pipeline_dict

ALL_OPS = [
    ("random_resized_crop", {"scale": [0.5, 1.0]}),
    ("horizontal_flip", {}),
    ("random_crop", {"padding": 2}),
    ("color_jitter", {"brightness": 0.4, "contrast": 0.4, "saturation": 0.4, "hue": 0.1}),
]


def transform(count: int = 4, seed: int = 3, ops=ALL_OPS, mean=MEAN) -> ViewTransform:
    return ViewTransform(
        count=count, seed=seed, mean=mean, std=STD, augment=[build_view_op(name, dict(p)) for name, p in ops]
    )


def test_keyed_stream_is_pinned_philox():
    """The (seed, sample, view) stream is Philox4x64-10 with counter (0, 0, view, sample): a literal known answer, so a
    NumPy that changed the generator would fail here instead of silently making stores unreplayable."""
    bits = np.random.Philox(key=3, counter=np.array([0, 0, 3, 7], dtype=np.uint64))
    assert int(bits.random_raw()) == 16775965346166101545
    rng = KeyedRandom(3, sample=7, view=3)
    assert rng.uniform() == (16775965346166101545 >> 11) * 2.0**-53 == pytest.approx(0.9094269036927412, abs=0)


def test_parameters_are_a_pure_function_of_seed_sample_view():
    views = transform()
    pairs = (np.array([7, 1256, 0, 7]), np.array([3, 2, 1, 0]))
    drawn = views.params(*pairs, (8, 8))
    np.testing.assert_array_equal(
        drawn[0],
        [0, 0, 8, 8, 0, 2, 4, 0.8799318671226501, 0.7062802910804749, 0.9365497827529907, -0.06820902228355408, 3],
    )
    np.testing.assert_array_equal(drawn[3], [0, 0, 8, 8, 0, 2, 2, 1, 1, 1, 0, 0])  # view 0: identity numbers
    # the same pair alone, in another order, or from a copy of the transform gives the same numbers
    np.testing.assert_array_equal(transform().params(np.array([1256]), np.array([2]), (8, 8))[0], drawn[1])
    np.testing.assert_array_equal(views.params(pairs[0][::-1], pairs[1][::-1], (8, 8)), drawn[::-1])
    other_seed = transform(seed=4).params(*pairs, (8, 8))
    assert not np.array_equal(other_seed[:3], drawn[:3])


def test_drawn_parameters_stay_in_their_ranges():
    views = transform(count=2)
    n = 2000
    p = views.params(np.arange(n), np.ones(n, dtype=np.int64), (8, 8))
    top, left, h, w = p[:, 0], p[:, 1], p[:, 2], p[:, 3]
    assert (h >= 1).all() and (w >= 1).all() and (top + h <= 8).all() and (left + w <= 8).all()
    assert 0.40 < p[:, 4].mean() < 0.60  # flip with p = 0.5
    assert set(np.unique(p[:, 5:7])) == {0, 1, 2, 3, 4}  # offsets 0..2*padding
    for col, lo, hi in [(7, 0.6, 1.4), (8, 0.6, 1.4), (9, 0.6, 1.4), (10, -0.1, 0.1)]:
        assert lo <= p[:, col].min() and p[:, col].max() <= hi
    assert set(np.unique(p[:, 11])) == set(range(24))  # every order of the four adjustments occurs


def image() -> torch.Tensor:
    return torch.arange(64, dtype=torch.float32).reshape(1, 8, 8) / 64


@pytest.mark.parametrize("name, params", ALL_OPS, ids=[n for n, _ in ALL_OPS])
def test_identity_numbers_leave_the_image_unchanged(name, params):
    op = build_view_op(name, params)
    x = image()
    assert torch.equal(op.apply(x, op.identity((8, 8))), x)


def test_ops_do_what_their_numbers_say():
    x = image()
    crop = build_view_op("random_crop", {"padding": 1})
    shifted = crop.apply(x, (0, 0))  # the padded image's top-left corner: content moves down-right by one pixel
    assert torch.equal(shifted[:, 1:, 1:], x[:, :-1, :-1]) and shifted[:, 0].abs().sum() == 0
    assert torch.equal(build_view_op("horizontal_flip").apply(x, (1.0,)), x.flip(-1))
    quadrant = build_view_op("random_resized_crop", {"interpolation": "nearest"}).apply(x, (0, 0, 4, 4))
    assert torch.equal(quadrant, x[:, :4, :4].repeat_interleave(2, 1).repeat_interleave(2, 2))
    brighter = build_view_op("color_jitter", {"brightness": 0.5}).apply(x, (1.5, 1, 1, 0, 0))
    assert torch.equal(brighter, (x * 1.5).clamp(0, 1))


def test_view_zero_is_the_eval_view_and_other_views_differ():
    views = transform()
    raw = torch.rand(5, 1, 8, 8)
    idx = np.arange(5)
    eval_inputs = (raw - MEAN[0]) / STD[0]
    assert torch.equal(views(raw, idx, np.zeros(5, dtype=np.int64)), eval_inputs)
    assert torch.equal(views.eval_view()(raw, idx, np.full(5, 3)), eval_inputs)
    augmented = views(raw, idx, np.full(5, 3))
    assert all(not torch.equal(augmented[j], eval_inputs[j]) for j in range(5))
    assert EVAL_VIEW == 0 and views.eval_view().augment == () and views.eval_view().count == 1


def test_without_ops_the_spec_is_the_foundation_spec():
    """Stores built before augmentation existed keep matching: the spec has no new keys when there are no ops."""
    spec = ViewTransform(count=1, seed=0, mean=MEAN, std=STD).spec()
    assert set(spec) == {"count", "seed", "transform", "digest"}
    assert spec["transform"] == {"normalize": {"mean": [pytest.approx(MEAN[0])], "std": [pytest.approx(STD[0])]}}


def _changed(index: int, key: str, value) -> list:
    ops = [(n, dict(p)) for n, p in ALL_OPS]
    ops[index][1][key] = value
    return ops


SPEC_CHANGES = {
    "count": lambda: transform(count=5),
    "seed": lambda: transform(seed=4),
    "mean": lambda: transform(mean=(0.31,)),
    "op-order": lambda: transform(ops=[ALL_OPS[1], ALL_OPS[0], *ALL_OPS[2:]]),
    "op-removed": lambda: transform(ops=ALL_OPS[:3]),
    "rrc-scale": lambda: transform(ops=_changed(0, "scale", [0.6, 1.0])),
    "rrc-ratio": lambda: transform(ops=_changed(0, "ratio", [0.8, 1.25])),
    "rrc-interpolation": lambda: transform(ops=_changed(0, "interpolation", "bicubic")),
    "rrc-antialias": lambda: transform(ops=_changed(0, "antialias", False)),
    "flip-p": lambda: transform(ops=_changed(1, "p", 0.25)),
    "crop-padding": lambda: transform(ops=_changed(2, "padding", 1)),
    "crop-fill": lambda: transform(ops=_changed(2, "fill", 0.5)),
    "crop-mode": lambda: transform(ops=_changed(2, "padding_mode", "reflect")),
    "jitter-brightness": lambda: transform(ops=_changed(3, "brightness", 0.3)),
    "jitter-contrast": lambda: transform(ops=_changed(3, "contrast", 0.3)),
    "jitter-saturation": lambda: transform(ops=_changed(3, "saturation", 0.3)),
    "jitter-hue": lambda: transform(ops=_changed(3, "hue", 0.2)),
}


@pytest.mark.parametrize("make", SPEC_CHANGES.values(), ids=SPEC_CHANGES.keys())
def test_spec_digest_changes_with_every_transform_parameter(make):
    assert transform().spec()["digest"] == transform().spec()["digest"]
    assert make().spec()["digest"] != transform().spec()["digest"]


def test_pipeline_views_are_validated_and_the_policy_is_not_in_the_spec(tmp_path):
    views = {"count": 4, "augment": [{"op": "random_crop", "padding": 1}]}
    cycle = parse_pipeline(pipeline_dict(tmp_path, views=views))
    rand = parse_pipeline(pipeline_dict(tmp_path, views={**views, "policy": "random"}))
    assert view_transform(cycle).spec() == view_transform(rand).spec()
    assert view_transform(cycle).spec()["transform"]["params"] == ["0.random_crop.top", "0.random_crop.left"]
    assert eval_views(cycle).augment == ()
    bad = {
        "unknown op": (
            {"augment": [{"op": "random_crp"}]},
            r"unknown view op 'random_crp'. Did you mean 'random_crop'",
        ),
        "listing": ({"augment": [{"op": "rotate"}]}, r"Valid choices: color_jitter, horizontal_flip, random_crop, "),
        "unknown param": (
            {"augment": [{"op": "random_crop", "paddin": 1}]},
            r"random_crop: paddin: Extra inputs are not permitted \(valid keys: padding, fill, padding_mode\)",
        ),
        "bad range": ({"augment": [{"op": "random_resized_crop", "scale": [0.9, 0.1]}]}, r"0 < min <= max <= 1"),
        "policy": ({"policy": "sometimes"}, r"views\.policy: Input should be 'cycle', 'random' or 'fresh'"),
    }
    for change, message in bad.values():
        with pytest.raises(ConfigError, match=message):
            parse_pipeline(pipeline_dict(tmp_path, views=change))


def test_an_empty_view_pipeline_is_refused_by_name_in_python_too():
    """torchvision's Compose([]) raised a ValueError naming neither the argument nor the fix."""
    with pytest.raises(ConfigError, match=r"a view pipeline is an empty list; give at least one step, or None"):
        build_transform([])
    assert build_transform(None) is None
