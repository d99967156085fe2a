"""Response-based losses on logits: cross-entropy and Hinton's knowledge distillation, per sample or per pixel."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from pydantic import Field

from kdcache.errors import TargetMismatchError
from kdcache.losses.base import LOSSES, LossParams, LossTerm, StepOutputs, check_student_width
from kdcache.losses.dense import labelled_positions, resize_to
from kdcache.metrics import match_spatial
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
        # a stored mass above 1 is refused when the rows are read (kdcache.targets.invariants); what is clamped
        # here is the float32 rounding of a tail that is exactly 0, nothing more
        p_tail = (1 - log_p_top.exp().sum(dim=1)).clamp_min(0)
        log_q_tail = torch.logsumexp(log_q.scatter(1, teacher.indices, float("-inf")), dim=1)
        tail = torch.where(p_tail > 0, p_tail * (p_tail.clamp_min(1e-30).log() - log_q_tail), 0.0)
        per_sample = per_sample + tail
    return per_sample.mean() * temperature**2


def kd_divergence(
    student: torch.Tensor,
    teacher: torch.Tensor | ProbabilityEnsemble | TopKLogits,
    temperature: float,
    valid: torch.Tensor | None = None,
) -> torch.Tensor:
    """T² · KL(p_T ‖ softmax(s/T)), classes on dim 1, averaged over samples (and pixels).

    p_T is softmax(t/T) for teacher logits t, and (1/M) Σ_m softmax(t_m/T) for a :class:`ProbabilityEnsemble` of M
    teachers (see :mod:`kdcache.targets.ensemble`). Hinton, Vinyals & Dean 2015, "Distilling the Knowledge in a
    Neural Network", §2: the soft-target gradient scales as 1/T², so the loss is multiplied by T² to keep its
    magnitude comparable across temperatures. ``valid`` masks out positions (e.g. ignore_index pixels). Cached
    top-k logits (:class:`TopKLogits`) take the k+1-bin form, :func:`topk_kd_divergence`, so any decoded logits
    target can be passed as it comes.
    """
    check_teacher_width(student, teacher)
    if isinstance(teacher, TopKLogits):
        return topk_kd_divergence(student, teacher, temperature)
    log_q = F.log_softmax(student.float() / temperature, dim=1)
    log_p = soft_log_probs(teacher, temperature)
    per_position = (log_p.exp() * (log_p - log_q)).sum(dim=1)
    if valid is not None:
        per_position = per_position[valid]
        if per_position.numel() == 0:  # every position ignored: no signal, rather than the NaN of an empty mean
            return per_position.sum()
    return per_position.mean() * temperature**2


def check_teacher_width(student: torch.Tensor, teacher: torch.Tensor | ProbabilityEnsemble | TopKLogits) -> None:
    """Refuse a teacher whose class count differs from the student's (classes on dim 1), naming both widths.

    Without it the KL fails with a raw size mismatch (dense), or gathers classes the student does not have (top-k).
    Top-k targets hold k of the teacher's classes, so only k ≤ the student's width can be checked without a sync.
    """
    width = student.shape[1] if student.dim() >= 2 else None
    if isinstance(teacher, TopKLogits):
        if width is None or teacher.indices.shape[1] > width:
            raise TargetMismatchError(
                f"the teacher's top-k target keeps {teacher.indices.shape[1]} classes per sample, more than the "
                f"student's {width} (logits of shape {tuple(student.shape)}): {_SAME_CLASSES}"
            )
        return
    logits = teacher.members[0] if isinstance(teacher, ProbabilityEnsemble) else teacher
    if not isinstance(logits, torch.Tensor):
        raise TargetMismatchError(
            f"the teacher target is a {type(teacher).__name__}, not decoded logits: pass decoded targets (a batch's "
            "targets after batch.to(device), or a live teacher's outputs)"
        )
    if logits.dim() != student.dim() or logits.shape[1] != width or logits.shape[0] != student.shape[0]:
        raise TargetMismatchError(
            f"the teacher's logits have {logits.shape[1] if logits.dim() >= 2 else None} classes (shape "
            f"{tuple(logits.shape)}), the student's {width} (shape {tuple(student.shape)}): {_SAME_CLASSES}"
        )


_SAME_CLASSES = (
    "KD compares the two distributions class by class, so the student needs the teacher's classes. Build the "
    "student with the teacher's num_classes (a pipeline passes data.num_classes to both models; do not set another "
    "num_classes in student.model.args)"
)

_HEAD = "student module whose output is read, e.g. heads.old (default: the model's output)"


class StudentLogits(LossTerm):
    """A term on one of the student's logits: the model's output, or the output of the module at the parameter
    ``student_layer`` (a named head of a multi-head network, e.g. ``heads.old`` in Learning without Forgetting)."""

    params: CrossEntropyParams | KDParams  # the params of every subclass: each declares ``student_layer``

    def student_layers(self) -> list[str]:
        return [] if self.params.student_layer is None else [self.params.student_layer]

    def logits(self, out: StepOutputs) -> torch.Tensor:
        return out.logits if self.params.student_layer is None else out.features[self.params.student_layer]


class CrossEntropyParams(LossParams):
    label_smoothing: float = Field(default=0.0, ge=0.0, lt=1.0)
    student_layer: str | None = Field(None, description=_HEAD)


@LOSSES.register("ce")
class CrossEntropy(StudentLogits):
    """Cross-entropy with the ground-truth labels (the task loss); ``ignore_index`` is honoured.

    Dense logits ``(B, C, h, w)`` are bilinearly upsampled to the label map's ``(H, W)`` first (PSPNet trains on
    the upsampled prediction), so a model may return its native, lower-resolution logits. PSPNet's auxiliary loss
    (Zhao et al. 2017, §4.1) is this term on the aux classifier: ``{name: ce, student_layer: aux, weight: 0.4}``.
    """

    Params = CrossEntropyParams
    params: CrossEntropyParams

    def forward(self, out: StepOutputs) -> torch.Tensor:
        logits = match_spatial(self.logits(out), out.labels)
        check_student_width(logits, self.setup)
        if out.mix is None:
            return self._ce(logits, out.labels, "mean")
        partner, weight = out.mix  # mixed views: the labels mixed as the images were (Zhang et al. 2018, Eq. 1)
        per_sample = weight * self._ce(logits, out.labels) + (1 - weight) * self._ce(logits, partner)
        return per_sample.mean()

    def _ce(self, logits: torch.Tensor, labels: torch.Tensor, reduction: str = "none") -> torch.Tensor:
        return F.cross_entropy(
            logits,
            labels,
            ignore_index=self.setup.ignore_index,
            label_smoothing=self.params.label_smoothing,
            reduction=reduction,
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

    Dense maps (segmentation) are compared pixel-wise at the teacher's native resolution, as the pixel-wise
    distillation of Liu et al. 2019 ("Structured Knowledge Distillation for Semantic Segmentation", Eq. 1) does on
    the 1/8-resolution score maps: the cached map is used as stored, the student's map is resized to it only if the
    sizes differ, and positions whose label pixels are all ``ignore_index`` are left out
    (:func:`~kdcache.losses.dense.labelled_positions`).

    With ``[{name: ce, weight: 1-α}, {name: kd, weight: α}]`` this is the paper's α-mixture of hard and soft targets.
    """

    Params = KDParams
    params: KDParams

    def teacher_targets(self) -> list[str]:
        return [self.params.target]

    def forward(self, out: StepOutputs) -> torch.Tensor:
        teacher = out.teacher[self.params.target]
        logits = self.logits(out)
        if isinstance(teacher, TopKLogits) or logits.dim() != 4:
            return kd_divergence(logits, teacher, self.params.temperature)
        student = resize_to(logits, teacher)
        valid = labelled_positions(out.labels, teacher.shape[-2:], self.setup.ignore_index)
        return kd_divergence(student, teacher, self.params.temperature, valid)
