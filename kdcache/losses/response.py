"""Response-based losses on logits: cross-entropy and Hinton's knowledge distillation."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from pydantic import Field

from kdcache.losses.base import LOSSES, LossParams, LossTerm, StepOutputs
from kdcache.targets.ensemble import ProbabilityEnsemble, soft_log_probs
from kdcache.targets.logits import TopKLogits


def topk_kd_divergence(student: torch.Tensor, teacher: TopKLogits, temperature: float) -> torch.Tensor:
    """T² · KL over k+1 bins: the teacher's top-k classes plus one bin for all remaining probability mass.

    The teacher's top-k probabilities are exact, softmax(z/T)_c = exp(z_c/T - lse_T), because the cache stores the
    log-sum-exp of the full logits at T; its tail bin is 1 - Σ top-k. The student's bins are its probabilities of
    the same k classes and the log-sum-exp of all other classes. With k = C there is no tail and this equals
    :func:`kd_divergence` exactly.
    """
    log_q = F.log_softmax(student.float() / temperature, dim=1)
    log_p_top = teacher.values / temperature - teacher.lse_at(temperature)[:, None]
    per_sample = (log_p_top.exp() * (log_p_top - log_q.gather(1, teacher.indices))).sum(dim=1)
    if teacher.indices.shape[1] < student.shape[1]:
        p_tail = (1 - log_p_top.exp().sum(dim=1)).clamp_min(0)
        log_q_tail = torch.logsumexp(log_q.scatter(1, teacher.indices, float("-inf")), dim=1)
        tail = torch.where(p_tail > 0, p_tail * (p_tail.clamp_min(1e-30).log() - log_q_tail), 0.0)
        per_sample = per_sample + tail
    return per_sample.mean() * temperature**2


def kd_divergence(
    student: torch.Tensor,
    teacher: torch.Tensor | ProbabilityEnsemble,
    temperature: float,
    valid: torch.Tensor | None = None,
) -> torch.Tensor:
    """T² · KL(p_T ‖ softmax(s/T)), classes on dim 1, averaged over samples (and pixels).

    p_T is softmax(t/T) for teacher logits t, and (1/M) Σ_m softmax(t_m/T) for a :class:`ProbabilityEnsemble` of M
    teachers (see :mod:`kdcache.targets.ensemble`). Hinton, Vinyals & Dean 2015, "Distilling the Knowledge in a
    Neural Network", §2: the soft-target gradient scales as 1/T², so the loss is multiplied by T² to keep its
    magnitude comparable across temperatures. ``valid`` masks out positions (e.g. ignore_index pixels).
    """
    log_q = F.log_softmax(student.float() / temperature, dim=1)
    log_p = soft_log_probs(teacher, temperature)
    per_position = (log_p.exp() * (log_p - log_q)).sum(dim=1)
    if valid is not None:
        per_position = per_position[valid]
    return per_position.mean() * temperature**2


_HEAD = "student module whose output is read, e.g. heads.old (default: the model's output)"


class StudentLogits(LossTerm):
    """A term on one of the student's logits: the model's output, or the output of the module at the parameter
    ``student_layer`` (a named head of a multi-head network, e.g. ``heads.old`` in Learning without Forgetting)."""

    def student_layers(self) -> list[str]:
        return [] if self.params.student_layer is None else [self.params.student_layer]

    def logits(self, out: StepOutputs) -> torch.Tensor:
        return out.logits if self.params.student_layer is None else out.features[self.params.student_layer]


class CrossEntropyParams(LossParams):
    label_smoothing: float = Field(default=0.0, ge=0.0, lt=1.0)
    student_layer: str | None = Field(None, description=_HEAD)


@LOSSES.register("ce")
class CrossEntropy(StudentLogits):
    """Cross-entropy with the ground-truth labels (the task loss); ``ignore_index`` is honoured."""

    Params = CrossEntropyParams
    params: CrossEntropyParams

    def forward(self, out: StepOutputs) -> torch.Tensor:
        return F.cross_entropy(
            self.logits(out),
            out.labels,
            ignore_index=self.setup.ignore_index,
            label_smoothing=self.params.label_smoothing,
        )


class KDParams(LossParams):
    temperature: float = Field(default=4.0, gt=0)
    target: str = "logits"
    student_layer: str | None = Field(None, description=_HEAD)


@LOSSES.register("kd")
class KnowledgeDistillation(StudentLogits):
    """Hinton KD: T²·KL between teacher and student distributions at temperature T (see :func:`kd_divergence`).

    ``target`` names the cached logits: ``logits`` (dense), ``logits_int8`` (dequantised) or ``logits_topk``
    (k+1-bin KL, :func:`topk_kd_divergence`).

    With ``[{name: ce, weight: 1-α}, {name: kd, weight: α}]`` this is the paper's α-mixture of hard and soft targets.
    """

    Params = KDParams
    params: KDParams

    def teacher_targets(self) -> list[str]:
        return [self.params.target]

    def forward(self, out: StepOutputs) -> torch.Tensor:
        teacher = out.teacher[self.params.target]
        logits = self.logits(out)
        if isinstance(teacher, TopKLogits):
            return topk_kd_divergence(logits, teacher, self.params.temperature)
        valid = out.labels != self.setup.ignore_index if logits.dim() > 2 else None
        return kd_divergence(logits, teacher, self.params.temperature, valid)
