"""Response-based losses on logits: cross-entropy and Hinton's knowledge distillation."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from pydantic import Field

from kdcache.losses.base import LOSSES, LossParams, LossTerm, StepOutputs
from kdcache.targets.ensemble import ProbabilityEnsemble, soft_log_probs


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


class CrossEntropyParams(LossParams):
    label_smoothing: float = Field(default=0.0, ge=0.0, lt=1.0)


@LOSSES.register("ce")
class CrossEntropy(LossTerm):
    """Cross-entropy with the ground-truth labels (the task loss); ``ignore_index`` is honoured."""

    Params = CrossEntropyParams
    params: CrossEntropyParams

    def forward(self, out: StepOutputs) -> torch.Tensor:
        return F.cross_entropy(
            out.logits, out.labels, ignore_index=self.setup.ignore_index, label_smoothing=self.params.label_smoothing
        )


class KDParams(LossParams):
    temperature: float = Field(default=4.0, gt=0)
    target: str = "logits"


@LOSSES.register("kd")
class KnowledgeDistillation(LossTerm):
    """Hinton KD: T²·KL between teacher and student distributions at temperature T (see :func:`kd_divergence`).

    With ``[{name: ce, weight: 1-α}, {name: kd, weight: α}]`` this is the paper's α-mixture of hard and soft targets.
    """

    Params = KDParams
    params: KDParams

    def teacher_targets(self) -> list[str]:
        return [self.params.target]

    def forward(self, out: StepOutputs) -> torch.Tensor:
        valid = out.labels != self.setup.ignore_index if out.logits.dim() > 2 else None
        return kd_divergence(out.logits, out.teacher[self.params.target], self.params.temperature, valid)
