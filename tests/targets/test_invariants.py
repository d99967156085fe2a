"""The invariants stored logits targets satisfy: true of every encoded batch, false once the parameters lie."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from kdcache.targets import build_target
from kdcache.targets.invariants import int8_problem, topk_problem


def logits(kind: str) -> torch.Tensor:
    """Batches a teacher can produce: confident, near-uniform, exactly uniform, and large-magnitude rows."""
    torch.manual_seed(0)
    return {
        "confident": torch.randn(64, 100) * 6,
        "near-uniform": torch.randn(64, 100) * 1e-3,
        "uniform": torch.zeros(64, 100),
        "large": torch.randn(64, 100) * 2000 + 30000,
    }[kind]


@pytest.mark.parametrize("dtype", ["float16", "bfloat16", "float32"])
@pytest.mark.parametrize("kind", ["confident", "near-uniform", "uniform", "large"])
def test_every_encoded_topk_batch_satisfies_the_invariants(kind, dtype):
    target = build_target("logits", {"encoding": "topk", "k": 5, "temperatures": [0.5, 1.0, 4.0], "dtype": dtype})
    stored = target.encode(logits(kind))
    assert target.stored_problem(stored, (100,)) == ""


def test_lse_columns_read_at_other_temperatures_are_refused():
    target = build_target("logits", {"encoding": "topk", "k": 5, "temperatures": [1.0, 4.0]})
    stored = target.encode(logits("confident"))
    values, lse = stored["logits_topk/values"], stored["logits_topk/lse"]
    reordered = topk_problem(values, lse, (4.0, 1.0), 100, "float16")
    assert reordered.startswith("at T=4.0 the stored top-5 classes of row 0 hold") and "outside [0.05, 1]" in reordered
    changed = topk_problem(values, lse, (1.0, 2.0), 100, "float16")
    assert changed.startswith("at T=2.0") and "rows read)" in changed
    mass = float(changed.split(" hold ")[1].split(" of")[0])
    assert mass > 1.001  # the loss used to clamp this tail to 0 and train on it


def test_a_rise_of_t_lse_faster_than_log_c_is_refused():
    """Masses can be in range while lse_T is not the log-sum-exp at T: the rise of T·lse_T is bounded by log C."""
    values = np.array([[10.0]], dtype=np.float32)  # k = 1 of C = 10 classes
    assert topk_problem(values, np.array([[10.0, 5.0]], dtype=np.float32), (1.0, 2.0), 10, "float32") == ""
    fast = topk_problem(values, np.array([[10.0, 6.2]], dtype=np.float32), (1.0, 2.0), 10, "float32")
    assert fast.startswith("T·lse_T goes from 10 at T=1.0 to 12.4 at T=2.0 in row 0, not a rise of 0..2.303")
    falling = topk_problem(values, np.array([[12.0, 5.5]], dtype=np.float32), (1.0, 2.0), 10, "float32")
    assert falling.startswith("T·lse_T goes from 12 at T=1.0 to 11 at T=2.0")


def test_int8_scales_must_be_positive_and_finite():
    target = build_target("logits", {"encoding": "int8"})
    stored = target.encode(logits("confident"))
    assert target.stored_problem(stored, (100,)) == ""
    scale = stored["logits_int8/scale"].copy()
    scale[3] = -scale[3]
    assert int8_problem(scale, stored["logits_int8/offset"]).startswith("row 3 has scale")
    scale[3] = np.inf
    assert "(1 of 64 rows read)" in int8_problem(scale, stored["logits_int8/offset"])
