"""Every target kind round-trips through a real store: cached values equal the live teacher's, within storage rounding."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from kdcache.errors import ConfigError, LayerNotFoundError, NonFiniteTargetError, TargetOverflowError
from kdcache.precompute import precompute
from kdcache.store import open_store, read_manifest
from kdcache.store.location import StoreLocation
from kdcache.targets import TopKLogits, build_target, fsp_matrix
from kdcache.train import CachedDataset, LiveTeacher, ViewDataset
from tests.conftest import cache_digits

SPECS = [
    ("logits", {"dtype": "float16"}),
    ("logits", {"encoding": "topk", "k": 3, "temperatures": [1.0, 4.0]}),
    ("logits", {"encoding": "int8"}),
    ("fsp", {"layers": ["layer1", "layer2"]}),
    ("features", {"layer": "layer2"}),
    ("features", {"layer": "layer1", "pool": [2, 2], "dtype": "bfloat16"}),
    ("embedding", {"layer": "pool", "dtype": "float32"}),
]
INDICES = np.array([299, 5, 140, 7, 128, 0, 64, 200])


@pytest.fixture
def stores(tmp_path, teacher, digits_small, views):
    targets = [build_target(kind, params) for kind, params in SPECS]
    cache_digits(tmp_path / "s.zarr", teacher, digits_small, views, targets)
    names = [t.name for t in targets]
    cached = CachedDataset(digits_small, open_store(str(tmp_path / "s.zarr")), teacher="t8", targets=names, views=views)
    live = LiveTeacher(teacher, targets, torch.device("cpu"))(ViewDataset(digits_small, views)[INDICES])
    return cached[INDICES].to("cpu").targets, live, {t.name: t for t in targets}


def test_target_names_follow_the_store_layout(stores):
    _, _, targets = stores
    assert sorted(targets) == sorted(
        [
            "logits",
            "logits_topk",
            "logits_int8",
            "fsp/layer1__layer2",
            "features/layer2",
            "features/layer1",
            "embedding/pool",
        ]
    )


@pytest.mark.parametrize(
    ("name", "atol", "rtol"),
    [
        ("logits", 2e-3, 1e-3),
        ("fsp/layer1__layer2", 2e-3, 2e-3),
        ("features/layer2", 2e-3, 2e-3),
        ("features/layer1", 2e-2, 1e-2),
        ("embedding/pool", 0, 0),
    ],
    ids=["dense-fp16", "fsp-fp16", "features-fp16", "features-pooled-bf16", "embedding-fp32"],
)
def test_cached_float_targets_equal_live_within_storage_rounding(stores, name, atol, rtol):
    cached, live, _ = stores
    torch.testing.assert_close(cached[name], live[name], atol=atol, rtol=rtol)


def test_shapes_of_feature_targets(stores):
    cached, _, _ = stores
    assert cached["fsp/layer1__layer2"].shape == (8, 8, 16)  # width 8 -> (8 x 16)
    assert cached["features/layer2"].shape == (8, 16, 4, 4)
    assert cached["features/layer1"].shape == (8, 8, 2, 2)  # pooled from 8x8
    assert cached["embedding/pool"].shape == (8, 32)


def test_int8_reconstructs_within_half_a_quantisation_step(stores):
    cached, live, _ = stores
    step = (live["logits"].amax(1) - live["logits"].amin(1)) / 255
    assert ((cached["logits_int8"] - live["logits"]).abs() <= step[:, None] / 2 + 1e-5).all()


def test_topk_keeps_top_classes_and_exact_log_sum_exp(stores):
    cached, live, _ = stores
    topk = cached["logits_topk"]
    assert isinstance(topk, TopKLogits)
    top = live["logits"].topk(3, dim=1)
    np.testing.assert_array_equal(topk.indices.numpy(), top.indices.numpy())
    torch.testing.assert_close(topk.values, top.values.half().float())
    # the log-sum-exp is over the distribution a reader reconstructs: the stored (fp16-rounded) top-k values and the
    # exact float32 tail, so the k probabilities and the tail bin sum to 1
    full = live["logits"].scatter(1, top.indices, top.values.half().float())
    for t in (1.0, 4.0):
        torch.testing.assert_close(topk.lse_at(t), torch.logsumexp(full / t, dim=1))
        tail = torch.logsumexp(full.scatter(1, top.indices, float("-inf")) / t, dim=1)
        total = (topk.values / t - topk.lse_at(t)[:, None]).exp().sum(1) + (tail - topk.lse_at(t)).exp()
        torch.testing.assert_close(total, torch.ones_like(total))
    with pytest.raises(ConfigError, match=r"cached with log-sum-exp at temperatures \[1.0, 4.0\], not at T=2.0"):
        topk.lse_at(2.0)


def test_fsp_matrix_by_hand():
    a = torch.tensor([[[[1.0, 2.0], [3.0, 4.0]]]])  # (1, 1, 2, 2)
    b = torch.tensor([[[[1.0, 0.0], [0.0, 1.0]]], [[[2.0, 2.0], [2.0, 2.0]]]]).transpose(0, 1)  # (1, 2, 2, 2)
    # G[0, j] = Σ_pos a · b_j / 4: b_0 picks 1 + 4 = 5, b_1 sums 2·(1+2+3+4) = 20
    torch.testing.assert_close(fsp_matrix(a, b), torch.tensor([[[5 / 4, 20 / 4]]]))
    big = torch.arange(16.0).view(1, 1, 4, 4)  # pooled 2x2 to [[2.5, 4.5], [10.5, 12.5]] against a's 2x2
    torch.testing.assert_close(fsp_matrix(big, a), torch.tensor([[[(2.5 + 9 + 31.5 + 50) / 4]]]))


def test_nan_teacher_outputs_are_refused_with_indices_and_nothing_is_committed(tmp_path, digits_small, views):
    class NaNAt(torch.nn.Module):
        def forward(self, x):
            out = torch.zeros(len(x), 10)
            out[x[:, 0, 0, 0] == x[:, 0, 0, 0].max()] = float("nan")  # some rows poisoned
            return out

    target = build_target("logits", {})
    with pytest.raises(NonFiniteTargetError, match=r"NaN/Inf in target 'logits' for \d+ sample\(s\), indices \[\d+"):
        precompute(
            NaNAt(),
            digits_small,
            tmp_path / "n.zarr",
            targets=[target],
            views=views,
            num_classes=10,
            shard_samples=128,
            progress=False,
        )
    manifest = read_manifest(StoreLocation(tmp_path / "n.zarr"))
    assert manifest.teachers["teacher"].shards == [] and manifest.status == "building"


def test_fp16_overflow_suggests_a_wider_dtype(tmp_path, digits_small, views):
    class Huge(torch.nn.Module):
        def forward(self, x):
            return torch.full((len(x), 10), 1e5)

    with pytest.raises(TargetOverflowError, match=r"beyond float16's limit 65504.*bfloat16 or float32"):
        precompute(
            Huge(),
            digits_small,
            tmp_path / "h.zarr",
            targets=[build_target("logits", {})],
            views=views,
            num_classes=10,
            shard_samples=128,
            progress=False,
        )
    fine = precompute(
        Huge(),
        digits_small,
        tmp_path / "h32.zarr",
        targets=[build_target("logits", {"dtype": "float32"})],
        views=views,
        num_classes=10,
        shard_samples=128,
        progress=False,
    )
    assert fine.complete


def test_unknown_layer_lists_nearby_names(tmp_path, teacher, digits_small, views):
    with pytest.raises(
        LayerNotFoundError,
        match=r"no layer 'layer4'\. Nearest: layer3, layer2, layer1.*Top-level layers: layer1, layer2, layer3, pool",
    ):
        precompute(
            teacher,
            digits_small,
            tmp_path / "l.zarr",
            targets=[build_target("features", {"layer": "layer4"})],
            views=views,
            num_classes=10,
            progress=False,
        )


def test_topk_larger_than_class_count_is_refused(tmp_path, teacher, digits_small, views):
    with pytest.raises(ConfigError, match=r"top-k with k=11 but the teacher has only 10 classes"):
        precompute(
            teacher,
            digits_small,
            tmp_path / "k.zarr",
            targets=[build_target("logits", {"encoding": "topk", "k": 11})],
            views=views,
            num_classes=10,
            progress=False,
        )
