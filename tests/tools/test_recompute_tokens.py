"""`verify --recompute` on a token store: top-k log-probabilities with their tail and sampled tokens re-drawn from the
same keyed uniforms are checked against the live language model."""

from __future__ import annotations

import copy

import pytest
import torch

from kdcache.errors import ConfigError
from kdcache.precompute import precompute
from kdcache.store import open_store
from kdcache.targets import build_target
from kdcache.tools.recompute import Tolerance, recompute_check
from kdcache.views import TokenViews

TOKEN_TARGETS = [{"k": 4, "temperatures": [1.0, 2.0]}, {"encoding": "sampled", "samples": 4}]


@pytest.fixture(scope="module")
def store(tmp_path_factory, _lm_teacher, lm_train) -> str:
    """Both token encodings of the tiny trained LM over the test corpus."""
    path = str(tmp_path_factory.mktemp("verify-tokens") / "s.zarr")
    precompute(
        _lm_teacher,
        lm_train,
        path,
        targets=[build_target("token_logits", p) for p in TOKEN_TARGETS],
        views=TokenViews(),
        num_classes=300,
        teacher_name="lm",
        progress=False,
    )
    return path


def check(store: str, teacher, train, **options):
    """recompute_check of every sequence of the store against ``teacher``."""
    cache = open_store(store)
    return recompute_check(
        cache, teacher, train, TokenViews(), teacher_name="lm", pairs=cache.num_samples, progress=False, **options
    )


def perturbed(teacher, scale: float, seed: int = 0):
    """A copy of ``teacher`` with Gaussian noise of ``scale`` added to every weight."""
    torch.manual_seed(seed)
    other = copy.deepcopy(teacher)
    with torch.no_grad():
        for p in other.parameters():
            p.add_(torch.randn_like(p) * scale)
    return other


def test_recompute_is_exact_on_both_token_encodings(store, lm_teacher, lm_train):
    report = check(store, lm_teacher, lm_train)
    topk, sampled = report.targets["token_logits_topk"], report.targets["token_logits_sampled"]
    assert report.passed and report.pairs == len(lm_train) and open_store(store).check_digests() == []
    assert (topk.exact, topk.max_abs_error, topk.lse_error, topk.ids_agreement) == (report.pairs, 0.0, 0.0, 1.0)
    assert 0 < topk.encoding_error < 0.02  # float16 rounding of log-probabilities in (-10, 0]
    assert (sampled.exact, sampled.max_abs_error, sampled.ids_agreement) == (report.pairs, 0.0, 1.0)
    assert sampled.encoding_error is None and sampled.min_cosine is None and sampled.kind == "token_logits sampled n=4"


def test_recompute_fails_another_lm_and_reports_the_fraction_of_draws_that_differ(store, lm_teacher, lm_train):
    report = check(store, perturbed(lm_teacher, 0.05), lm_train)
    topk, sampled = report.targets["token_logits_topk"], report.targets["token_logits_sampled"]
    assert not report.passed and not topk.passed(report.tolerance) and not sampled.passed(report.tolerance)
    assert topk.max_abs_error > 0.1 and topk.lse_error > 0.01 and topk.ids_agreement < 0.95 and topk.exact == 0
    assert 0.2 < 1 - sampled.ids_agreement <= 1 and sampled.max_abs_error >= 0.25  # at least one draw of four moved

    slightly = check(store, perturbed(lm_teacher, 1e-3), lm_train, targets=["token_logits_sampled"])
    moved = 1 - slightly.targets["token_logits_sampled"].ids_agreement
    assert list(slightly.targets) == ["token_logits_sampled"] and 0 < moved < 0.2 and not slightly.passed
    allowed = check(
        store,
        perturbed(lm_teacher, 1e-3),
        lm_train,
        targets=["token_logits_sampled"],
        tolerance=Tolerance(sampled_mismatch=moved),
    )
    assert (
        allowed.passed
        and allowed.targets["token_logits_sampled"].ids_same == slightly.targets["token_logits_sampled"].ids_same
    )


def test_unknown_token_target_lists_the_stored_ones(store, lm_teacher, lm_train):
    with pytest.raises(ConfigError, match=r"\['token_logits'\]; its targets are \['token_logits_sampled', 'token_"):
        check(store, lm_teacher, lm_train, targets=["token_logits"])
