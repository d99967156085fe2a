"""Token losses against hand-computed values: next-token CE, forward and reverse KL (live, top-k with the tail bin,
k = V equal to dense), the sampled-token estimator; padding positions cost nothing."""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from kdcache.errors import ConfigError, TargetMismatchError
from kdcache.losses import LossSetup, StepOutputs, build_objective
from kdcache.losses.tokens import TAIL_FLOOR, token_kd_divergence
from kdcache.targets import SampledTokens, TokenTopK, build_target

SETUP = LossSetup(num_classes=6, task="language-model")


def term(name: str, **params):
    return build_objective([(name, 1.0, params)], SETUP).terms[name]


def hand_kl(p: list[float], q: list[float]) -> float:
    return sum(a * math.log(a / b) for a, b in zip(p, q, strict=True) if a > 0)


def test_next_token_is_the_cross_entropy_over_labelled_positions() -> None:
    logits = torch.tensor([[[2.0, 0.0, 0.0], [0.0, 1.0, 0.0], [5.0, 5.0, 5.0]]])
    labels = torch.tensor([[0, 2, -100]])
    expected = (-math.log(math.exp(2) / (math.exp(2) + 2)) - math.log(1 / (math.e + 2))) / 2
    value = term("next_token")(StepOutputs(logits=logits, labels=labels))
    assert value.item() == pytest.approx(expected, rel=1e-6)


def test_forward_kd_from_a_live_teacher_is_the_per_token_kl() -> None:
    student = torch.tensor([[[1.0, 0.0, -1.0], [0.0, 0.0, 0.0]]])
    teacher = torch.tensor([[[0.0, 1.0, 0.0], [2.0, 0.0, 0.0]]])
    labels = torch.tensor([[1, 1]])
    p = F.softmax(teacher / 2, dim=-1)[0].tolist()
    q = F.softmax(student / 2, dim=-1)[0].tolist()
    expected = 4 * (hand_kl(p[0], q[0]) + hand_kl(p[1], q[1])) / 2
    out = StepOutputs(logits=student, labels=labels, teacher={"token_logits_topk": teacher})
    assert term("token_kd", temperature=2.0)(out).item() == pytest.approx(expected, rel=1e-5)
    reverse = 4 * (hand_kl(q[0], p[0]) + hand_kl(q[1], p[1])) / 2
    assert term("token_kd", temperature=2.0, direction="reverse")(out).item() == pytest.approx(reverse, rel=1e-5)


def test_padding_positions_cost_nothing() -> None:
    student, teacher = torch.randn(2, 4, 6), torch.randn(2, 4, 6)
    labels = torch.tensor([[1, 2, 3, 4], [5, 0, -100, -100]])
    changed = student.clone()
    changed[1, 2:] = 100 * torch.randn(2, 6)  # anything at padded positions
    for name, params in [
        ("next_token", {}),
        ("token_kd", {"direction": "forward"}),
        ("token_kd", {"direction": "reverse"}),
    ]:
        loss = term(name, **params)
        a = loss(StepOutputs(student, labels, teacher={"token_logits_topk": teacher}))
        b = loss(StepOutputs(changed, labels, teacher={"token_logits_topk": teacher}))
        assert a.item() == b.item()
    nothing = torch.full((1, 3), -100)
    empty = term("token_kd")(
        StepOutputs(torch.randn(1, 3, 6, requires_grad=True), nothing, teacher={"token_logits_topk": teacher})
    )
    assert empty.item() == 0.0 and empty.requires_grad


def topk_of(teacher: torch.Tensor, k: int, temperatures=(1.0,)) -> TokenTopK:
    target = build_target("token_logits", {"k": k, "dtype": "float32", "temperatures": list(temperatures)})
    target.layout(tuple(teacher.shape[1:]))
    arrays = target.encode_at(teacher, np.arange(len(teacher)), np.zeros(len(teacher), dtype=np.int64))
    return target.decode({name: torch.from_numpy(a) for name, a in arrays.items()})


def test_topk_forward_kl_uses_a_tail_bin_computed_by_hand() -> None:
    teacher = torch.tensor([[[3.0, 1.0, 0.0, -1.0]]])
    student = torch.tensor([[[1.0, 2.0, 0.5, 0.0]]])
    p = F.softmax(teacher[0, 0], dim=-1).tolist()
    q = F.softmax(student[0, 0], dim=-1).tolist()
    bins_p, bins_q = [p[0], p[1], p[2] + p[3]], [q[0], q[1], q[2] + q[3]]  # top-2 plus the tail
    out = StepOutputs(student, torch.tensor([[0]]), teacher={"token_logits_topk": topk_of(teacher, 2)})
    assert term("token_kd")(out).item() == pytest.approx(hand_kl(bins_p, bins_q), rel=1e-5)
    reverse = term("token_kd", direction="reverse")(out).item()
    assert reverse == pytest.approx(hand_kl(bins_q, bins_p), rel=1e-5)


@pytest.mark.parametrize("direction", ["forward", "reverse"])
def test_topk_with_k_equal_to_the_vocabulary_is_dense_kd(direction) -> None:
    teacher, student = torch.randn(3, 7, 6) * 2, torch.randn(3, 7, 6)
    labels = torch.randint(0, 6, (3, 7))
    labels[2, 4:] = -100
    loss = term("token_kd", temperature=2.0, direction=direction)
    dense = loss(StepOutputs(student, labels, teacher={"token_logits_topk": teacher}))
    full = loss(StepOutputs(student, labels, teacher={"token_logits_topk": topk_of(teacher, 6, (2.0,))}))
    assert full.item() == pytest.approx(dense.item(), rel=1e-5, abs=1e-7)


def test_reverse_kl_floors_a_vanishing_teacher_tail() -> None:
    teacher = torch.tensor([[[30.0, 0.0, 0.0, 0.0]]])  # tail mass ~3e-13, below what fp16 log-probs resolve
    student = torch.zeros(1, 1, 4)
    out = StepOutputs(student, torch.tensor([[0]]), teacher={"token_logits_topk": topk_of(teacher, 1)})
    value = term("token_kd", direction="reverse")(out).item()
    q_top, q_tail = 0.25, 0.75
    expected = q_top * math.log(q_top / 1.0) + q_tail * math.log(q_tail / TAIL_FLOOR)
    assert value == pytest.approx(expected, rel=1e-4)


def test_sampled_tokens_give_the_weighted_cross_entropy() -> None:
    student = torch.tensor([[[1.0, 0.0, -1.0, 0.5]]])
    drawn = SampledTokens(
        ids=torch.tensor([[[0, 3, 0]]]), counts=torch.tensor([[[3.0, 1.0, 0.0]]]), samples=4, temperature=1.0
    )
    log_q = F.log_softmax(student[0, 0], dim=-1).tolist()
    expected = -(0.75 * log_q[0] + 0.25 * log_q[3])
    out = StepOutputs(student, torch.tensor([[2]]), teacher={"token_logits_sampled": drawn})
    assert term("token_kd", target="token_logits_sampled")(out).item() == pytest.approx(expected, rel=1e-6)
    with pytest.raises(ConfigError, match="estimate the forward KL only"):
        term("token_kd", target="token_logits_sampled", direction="reverse")(out)
    with pytest.raises(ConfigError, match=r"sampled at T=1\.0; a KD loss at T=2\.0"):
        term("token_kd", target="token_logits_sampled", temperature=2.0)(out)


def test_the_sampled_estimate_averages_to_the_cross_entropy_to_the_teacher() -> None:
    teacher, student = torch.randn(1, 1, 6) * 2, torch.randn(1, 1, 6)
    target = build_target("token_logits", {"encoding": "sampled", "samples": 8})
    target.layout((1, 6))
    values = []
    for sample in range(3000):  # 3000 independently keyed draws of 8 tokens for the same position
        arrays = target.encode_at(teacher, np.array([sample]), np.array([0]))
        drawn = target.decode({k: torch.from_numpy(v) for k, v in arrays.items()})
        values.append(
            term("token_kd", target="token_logits_sampled")(
                StepOutputs(student, torch.tensor([[0]]), teacher={"token_logits_sampled": drawn})
            ).item()
        )
    cross_entropy = -(F.softmax(teacher[0, 0], -1) * F.log_softmax(student[0, 0], -1)).sum().item()
    assert np.mean(values) == pytest.approx(cross_entropy, abs=4 * np.std(values) / np.sqrt(len(values)))


def test_mismatched_vocabularies_are_refused() -> None:
    labels = torch.zeros(1, 2, dtype=torch.long)
    with pytest.raises(TargetMismatchError, match="must share the tokenizer and the vocabulary"):
        term("token_kd")(StepOutputs(torch.randn(1, 2, 6), labels, teacher={"token_logits_topk": torch.randn(1, 2, 8)}))
    top = topk_of(torch.randn(1, 2, 8), 8)
    unknown = dataclasses.replace(top, vocab_size=None)  # a target decoded without the teacher's vocabulary
    with pytest.raises(TargetMismatchError, match="beyond the student's vocabulary of 6 tokens"):
        term("token_kd")(StepOutputs(torch.randn(1, 2, 6), labels, teacher={"token_logits_topk": unknown}))
    with pytest.raises(TargetMismatchError, match="Use ce and kd for classifiers"):
        term("next_token")(StepOutputs(torch.randn(4, 6), torch.zeros(4, dtype=torch.long)))


@pytest.mark.parametrize("width", [6, 10], ids=["narrower", "wider"])
def test_student_logits_of_another_width_than_the_cached_vocabulary_are_refused(width) -> None:
    """The decoded target knows the teacher's vocabulary (8): the tail bin and log-sum-exp are over it, so a student
    of 10 tokens (ids all in range) would be compared with the wrong tail, silently; 6 loses tokens. Both refused."""
    labels = torch.zeros(1, 2, dtype=torch.long)
    teacher = torch.randn(1, 2, 8)
    top, drawn = topk_of(teacher, 3), sampled_of(teacher, 4)
    assert (top.vocab_size, drawn.vocab_size) == (8, 8)
    for target in (top, drawn):
        with pytest.raises(TargetMismatchError, match=f"vocabulary of 8 tokens, but the student's logits are {width}"):
            token_kd_divergence(torch.randn(1, 2, width), labels, target)
    assert token_kd_divergence(torch.randn(1, 2, 8), labels, top).item() > 0


def sampled_of(teacher: torch.Tensor, samples: int) -> SampledTokens:
    target = build_target("token_logits", {"encoding": "sampled", "samples": samples})
    target.layout(tuple(teacher.shape[1:]))
    arrays = target.encode_at(teacher, np.arange(len(teacher)), np.zeros(len(teacher), dtype=np.int64))
    return target.decode({name: torch.from_numpy(a) for name, a in arrays.items()})
