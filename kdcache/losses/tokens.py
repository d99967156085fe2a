"""Token-level losses of causal language models: next-token cross-entropy and token-level KD, over the positions
that have a next-token label (padding and the stream's last token are left out). Classes are the last dimension.

KD compares the student's distribution at each position with the teacher's, T²-scaled as in Hinton et al. 2015:

* forward KL, KL(p_T ‖ q_T): exact from live teacher logits; from cached top-k over k + 1 bins, the k kept tokens
  plus one bin for the rest (:func:`topk_token_divergence`), which equals the full KL when k = V; from sampled
  tokens, the cross-entropy −Σ_j (c_j / n) log q_T(x_j) to the n draws, an unbiased estimate of the cross-entropy
  to p_T, i.e. of the KL plus the teacher's entropy, a constant (Anshumann et al., ACL 2025).
* reverse KL, KL(q_T ‖ p_T) (mode-seeking, as in MiniLLM, Gu et al., ICLR 2024): exact from live logits; from top-k
  over the same k + 1 bins. Samples of the teacher say nothing unbiased about it, so sampled targets refuse it.

Every divergence is computed per position over all ``B·L`` rows (views of the logits, no copies) and averaged
over the labelled ones: indexing ``(B, L, V)`` logits by a mask would copy them, and its backward scatter them
again, which costs more than the KL itself at V = 1024.
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from pydantic import Field

from kdcache.errors import ConfigError, TargetMismatchError
from kdcache.losses.base import LOSSES, LossParams, LossTerm, StepOutputs
from kdcache.targets.logits import TopKLogits
from kdcache.targets.tokens import SampledTokens, TokenTopK

TAIL_FLOOR = 1e-6
"""Reverse KL's floor on the teacher's tail mass: the cached tail is 1 − Σ top-k, known to the precision of the
stored log-probs (fp16: ~1e-4 relative), so a near-zero tail must not send log p_tail to −∞."""

Rows = torch.Tensor  # (P,) per-position values


def dense_rows(student: torch.Tensor, teacher: torch.Tensor, temperature: float, *, reverse: bool) -> Rows:
    """KL(p ‖ q) (or KL(q ‖ p) when ``reverse``) per row of ``(P, V)`` logits at temperature T."""
    log_q = F.log_softmax(student.float() / temperature, dim=-1)
    log_p = F.log_softmax(teacher.float() / temperature, dim=-1)
    if reverse:
        return (log_q.exp() * (log_q - log_p)).sum(dim=-1)
    return (log_p.exp() * (log_p - log_q)).sum(dim=-1)


def topk_bins(
    student: torch.Tensor, teacher: TopKLogits, temperature: float
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
    """Log-probabilities of the k + 1 bins, rows ``(P, V)``: ``(log q_top, log p_top)`` ``(P, k)`` and the tail
    masses ``(q_tail, p_tail)`` ``(P,)`` (None when k = V: there is no tail).

    The teacher's bins are exact at a declared temperature (the cached log-sum-exp); the student's tail is
    1 − Σ q_top, so the vocabulary is visited once (one log-sum-exp, 2.5× cheaper at V = 1024 than summing the
    tail's own entries as :func:`~kdcache.losses.response.topk_kd_divergence` does for class logits).
    """
    student = student.float() / temperature
    log_q_top = student.gather(1, teacher.indices) - torch.logsumexp(student, dim=1, keepdim=True)
    log_p_top = teacher.values / temperature - teacher.lse_at(temperature)[:, None]
    if teacher.indices.shape[1] >= student.shape[1]:
        return log_q_top, log_p_top, None, None
    q_tail = (1 - log_q_top.exp().sum(dim=1)).clamp_min(torch.finfo(torch.float32).tiny)
    p_tail = (1 - log_p_top.exp().sum(dim=1)).clamp_min(0)
    return log_q_top, log_p_top, q_tail, p_tail


def topk_rows(student: torch.Tensor, teacher: TopKLogits, temperature: float, *, reverse: bool) -> Rows:
    """KL over the k + 1 bins per row; reverse KL floors the teacher's tail at :data:`TAIL_FLOOR`."""
    log_q_top, log_p_top, q_tail, p_tail = topk_bins(student, teacher, temperature)
    if reverse:
        head = (log_q_top.exp() * (log_q_top - log_p_top)).sum(dim=1)
    else:
        head = (log_p_top.exp() * (log_p_top - log_q_top)).sum(dim=1)
    if q_tail is None or p_tail is None:
        return head
    if reverse:
        return head + q_tail * (q_tail.log() - p_tail.clamp_min(TAIL_FLOOR).log())
    return head + torch.where(p_tail > 0, p_tail * (p_tail.clamp_min(1e-30).log() - q_tail.log()), 0.0)


def sampled_rows(student: torch.Tensor, teacher: SampledTokens, temperature: float) -> Rows:
    """−Σ_j w_j log softmax(s/T)(x_j) per row: the cross-entropy to the sampled tokens x_j, w_j = count_j / n."""
    if abs(temperature - teacher.temperature) > 1e-9:
        raise ConfigError(
            f"the cached tokens were sampled at T={teacher.temperature}; a KD loss at T={temperature} would match "
            f"another distribution. Use temperature {teacher.temperature}, or re-run precompute with "
            f"sample_temperature {temperature}"
        )
    student = student.float() / temperature
    log_q = student.gather(1, teacher.ids) - torch.logsumexp(student, dim=1, keepdim=True)
    return -(teacher.weights * log_q).sum(dim=1)


def reverse_kd_divergence(student: torch.Tensor, teacher: torch.Tensor, temperature: float) -> torch.Tensor:
    """T² · KL(softmax(s/T) ‖ softmax(t/T)), rows ``(P, V)``, averaged over rows."""
    return dense_rows(student, teacher, temperature, reverse=True).mean() * temperature**2


def topk_token_divergence(student: torch.Tensor, teacher: TopKLogits, temperature: float) -> torch.Tensor:
    """T² · KL(p ‖ q) over k + 1 bins (the teacher's top-k tokens and one tail bin), rows ``(P, V)``, averaged over
    rows; equals dense forward KL when k = V (tested)."""
    return topk_rows(student, teacher, temperature, reverse=False).mean() * temperature**2


def topk_reverse_kd_divergence(student: torch.Tensor, teacher: TopKLogits, temperature: float) -> torch.Tensor:
    """T² · KL(q ‖ p) over the same k + 1 bins, rows ``(P, V)``; equals :func:`reverse_kd_divergence` when k = V."""
    return topk_rows(student, teacher, temperature, reverse=True).mean() * temperature**2


def sampled_kd_cross_entropy(student: torch.Tensor, teacher: SampledTokens, temperature: float) -> torch.Tensor:
    """T² · the cross-entropy to the teacher's sampled tokens, rows ``(P, V)``: an unbiased estimate of the
    cross-entropy to the teacher at T (:func:`sampled_rows`)."""
    return sampled_rows(student, teacher, temperature).mean() * temperature**2


def labelled_positions(logits: torch.Tensor, labels: torch.Tensor, ignore_index: int) -> torch.Tensor:
    """``(B, L)`` bool: the positions of ``(B, L, V)`` logits that have a next-token label."""
    if logits.dim() != 3 or labels.shape != logits.shape[:2]:
        raise TargetMismatchError(
            f"token losses need (batch, positions, vocabulary) logits and (batch, positions) labels; got logits "
            f"{tuple(logits.shape)} and labels {tuple(labels.shape)}. Use ce and kd for classifiers"
        )
    return labels != ignore_index


class NextTokenParams(LossParams):
    label_smoothing: float = Field(default=0.0, ge=0.0, lt=1.0)


@LOSSES.register("next_token")
class NextToken(LossTerm):
    """Next-token cross-entropy of a causal LM (the task loss), averaged over labelled positions."""

    Params = NextTokenParams
    params: NextTokenParams

    def forward(self, out: StepOutputs) -> torch.Tensor:
        labelled_positions(out.logits, out.labels, self.setup.ignore_index)
        return F.cross_entropy(
            out.logits.flatten(0, 1).float(),
            out.labels.flatten(),
            ignore_index=self.setup.ignore_index,
            label_smoothing=self.params.label_smoothing,
        )


class TokenKDParams(LossParams):
    temperature: float = Field(default=1.0, gt=0)
    target: str = "token_logits_topk"
    direction: Literal["forward", "reverse"] = "forward"


@LOSSES.register("token_kd")
class TokenKD(LossTerm):
    """Token-level KD at temperature T, forward or reverse KL, over labelled positions (see the module docstring).

    ``target`` names the cached targets (``token_logits_topk`` or ``token_logits_sampled``); with a live teacher
    (online KD) the same name carries the teacher's full logits and the divergence is exact. Mix it with
    ``next_token`` by weight: ``[{name: next_token, weight: 0.5}, {name: token_kd, weight: 0.5}]``.
    """

    Params = TokenKDParams
    params: TokenKDParams

    def teacher_targets(self) -> list[str]:
        return [self.params.target]

    def forward(self, out: StepOutputs) -> torch.Tensor:
        p = self.params
        return token_kd_divergence(
            out.logits,
            out.labels,
            out.teacher[p.target],
            p.temperature,
            direction=p.direction,
            ignore_index=self.setup.ignore_index,
            target=p.target,
        )


def token_kd_divergence(
    logits: torch.Tensor,
    labels: torch.Tensor,
    teacher: torch.Tensor | TokenTopK | SampledTokens,
    temperature: float = 1.0,
    *,
    direction: Literal["forward", "reverse"] = "forward",
    ignore_index: int = -100,
    target: str = "teacher",
) -> torch.Tensor:
    """T² · the token-level KD divergence of ``(B, L, V)`` student logits, averaged over the positions whose label
    is not ``ignore_index``: what the ``token_kd`` loss computes, for a training loop of your own.

    ``teacher`` is a batch's decoded target (:class:`~kdcache.targets.TokenTopK` or
    :class:`~kdcache.targets.SampledTokens`) or live teacher logits ``(B, L, V)``; ``target`` names it in errors.
    A decoded target knows the teacher's vocabulary (recorded by stage one), and student logits of another width,
    wider or narrower, are refused: the cached tail and log-sum-exp are over the teacher's vocabulary only.

    >>> kd = token_kd_divergence(student(batch.inputs), batch.labels, batch.targets["token_logits_topk"])  # doctest: +SKIP
    """
    labelled = labelled_positions(logits, labels, ignore_index).flatten()
    if not bool(labelled.any()):  # no labelled position: no signal, rather than the NaN of an empty mean
        return logits.sum() * 0
    student, reverse = logits.flatten(0, 1), direction == "reverse"
    if isinstance(teacher, TokenTopK | SampledTokens):
        _check_width(teacher.vocab_size, student.shape[1], target)
    if isinstance(teacher, TokenTopK):
        _check_ids(teacher.indices, student.shape[1], target)
        rows = topk_rows(student, teacher.flat(), temperature, reverse=reverse)
    elif isinstance(teacher, SampledTokens):
        if reverse:
            raise ConfigError(
                f"target {target!r} holds tokens sampled from the teacher, which estimate the forward KL only; use "
                "direction forward, or a top-k target for reverse KL"
            )
        _check_ids(teacher.ids, student.shape[1], target)
        rows = sampled_rows(student, teacher.flat(), temperature)
    elif isinstance(teacher, torch.Tensor) and teacher.shape == logits.shape:
        rows = dense_rows(student, teacher.flatten(0, 1), temperature, reverse=reverse)
    else:
        raise TargetMismatchError(
            f"the teacher's logits {tuple(getattr(teacher, 'shape', ()))} do not match the student's "
            f"{tuple(logits.shape)}: teacher and student must share the tokenizer and the vocabulary"
        )
    return rows[labelled].mean() * temperature**2


def _check_width(teacher_vocab: int | None, vocab: int, target: str) -> None:
    if teacher_vocab is not None and teacher_vocab != vocab:
        raise TargetMismatchError(
            f"target {target!r} was cached from a teacher with a vocabulary of {teacher_vocab} tokens, but the "
            f"student's logits are {vocab} wide: teacher and student must share the tokenizer and the vocabulary "
            f"(build the student with {teacher_vocab} tokens)"
        )


def _check_ids(ids: torch.Tensor, vocab: int, target: str) -> None:
    if ids.numel() and int(ids.max()) >= vocab:
        raise TargetMismatchError(
            f"target {target!r} holds token id {int(ids.max())}, beyond the student's vocabulary of {vocab} tokens: "
            "teacher and student must share the tokenizer and the vocabulary"
        )
