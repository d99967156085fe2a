"""Feature-based losses: FSP matching, FitNets hints, and aux/feature-map distillation."""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from pydantic import Field, model_validator
from torch import nn

from kdcache.errors import TargetMismatchError
from kdcache.losses.base import LOSSES, LossParams, LossTerm, StepOutputs
from kdcache.losses.dense import labelled_positions, resize_to
from kdcache.losses.response import kd_divergence
from kdcache.targets.fsp import fsp_matrix


class FSPParams(LossParams):
    pairs: list[tuple[str, str]] = Field(min_length=1, description="teacher layer pairs, e.g. [[layer1, layer2]]")
    student_pairs: list[tuple[str, str]] | None = Field(None, description="student layers, if named differently")
    weights: list[float] | None = Field(None, description="λ_i per pair (default: all 1)")

    @model_validator(mode="after")
    def _lengths(self) -> FSPParams:
        for name in ("student_pairs", "weights"):
            value = getattr(self, name)
            if value is not None and len(value) != len(self.pairs):
                raise ValueError(f"{name} has {len(value)} entries but pairs has {len(self.pairs)}")
        return self


@LOSSES.register("fsp")
class FSPLoss(LossTerm):
    """FSP loss (Yim et al., CVPR 2017, Eq. 3): Σ_i λ_i ‖G_i^T − G_i^S‖²₂ / Σ_i λ_i, averaged over the batch.

    G^T is read from the cache (``fsp/<a>__<b>``); G^S is computed from the live student with the same
    :func:`fsp_matrix`. Teacher and student must have the same channel counts at each pair (as in the paper,
    where the student is shallower, not narrower).
    """

    Params = FSPParams
    params: FSPParams

    def _student_pairs(self) -> list[tuple[str, str]]:
        return list(self.params.student_pairs or self.params.pairs)

    def teacher_targets(self) -> list[str]:
        return [f"fsp/{a}__{b}" for a, b in self.params.pairs]

    def student_layers(self) -> list[str]:
        return sorted({layer for pair in self._student_pairs() for layer in pair})

    def forward(self, out: StepOutputs) -> torch.Tensor:
        weights = self.params.weights or [1.0] * len(self.params.pairs)
        total = out.logits.new_zeros(())
        for weight, target, (a, b) in zip(weights, self.teacher_targets(), self._student_pairs(), strict=True):
            student = fsp_matrix(out.features[a], out.features[b])
            teacher = out.teacher[target]
            if student.shape != teacher.shape:
                raise TargetMismatchError(
                    f"FSP pair {target}: the student's matrix is {tuple(student.shape[1:])} but the teacher's is "
                    f"{tuple(teacher.shape[1:])}. FSP needs equal channel counts at both layers; pick other layers"
                )
            total = total + weight * (student - teacher).pow(2).sum(dim=(1, 2)).mean()
        return total / sum(weights)


class FeatureParams(LossParams):
    target: str = Field(description="cached target, e.g. features/layer2 or features/aux")
    student_layer: str | None = Field(None, description="student module path (default: the target's layer)")
    mode: Literal["mse", "smooth_l1", "kl"] = "mse"
    temperature: float = Field(1.0, gt=0, description="kl mode: temperature, channels are the classes")
    regressor: bool = Field(True, description="learn a 1x1 conv from student to teacher channels when they differ")


class HintParams(FeatureParams):
    """FitNets defaults: squared error through a learned regressor."""


class FeatureKDParams(FeatureParams):
    """Aux-layer defaults: pixel-wise KL at temperature T on maps with equal channels."""

    mode: Literal["mse", "smooth_l1", "kl"] = "kl"
    regressor: bool = False


class FeatureDistillation(LossTerm):
    """Match a student feature map to a cached teacher map: MSE, SmoothL1 or pixel-wise KL at temperature T.

    When spatial sizes differ the student map is bilinearly resized to the teacher's. When channel counts differ a
    1×1 convolution regressor (FitNets, Romero et al. 2015, Eq. 3: ½‖u_h − r(v_g; W_r)‖²) maps the student to the
    teacher's channels; it is created on the first batch and trained with the student. With dense labels
    (segmentation), positions whose label pixels are all ``ignore_index`` are left out of the mean, as in ``kd``.
    """

    Params = FeatureParams
    params: FeatureParams

    def __init__(self, params: FeatureParams, setup) -> None:
        super().__init__(params, setup)
        self.regressor: nn.Module | None = None

    def teacher_targets(self) -> list[str]:
        return [self.params.target]

    def student_layers(self) -> list[str]:
        return [self.params.student_layer or self.params.target.split("/", 1)[-1]]

    def prepare(self, out: StepOutputs) -> None:
        student, teacher = out.features[self.student_layers()[0]], out.teacher[self.params.target]
        if student.shape[1] != teacher.shape[1] and self.regressor is None:
            if not self.params.regressor:
                raise TargetMismatchError(
                    f"{self.params.target}: student has {student.shape[1]} channels, teacher {teacher.shape[1]}; "
                    "set regressor: true to learn a 1x1 projection, or pick a student layer with matching channels"
                )
            conv = nn.Conv2d if student.dim() == 4 else nn.Linear
            args = (
                (student.shape[1], teacher.shape[1], 1) if student.dim() == 4 else (student.shape[1], teacher.shape[1])
            )
            self.regressor = conv(*args).to(student.device)

    def forward(self, out: StepOutputs) -> torch.Tensor:
        student = out.features[self.student_layers()[0]].float()
        teacher = out.teacher[self.params.target].float()
        if self.regressor is not None:
            student = self.regressor(student)
        student = resize_to(student, teacher)
        valid = None
        if student.dim() == 4 and out.labels.dim() == 3:
            valid = labelled_positions(out.labels, teacher.shape[-2:], self.setup.ignore_index)
        if self.params.mode == "kl":
            return kd_divergence(student, teacher, self.params.temperature, valid)
        distance = F.smooth_l1_loss if self.params.mode == "smooth_l1" else F.mse_loss
        if valid is None:
            return distance(student, teacher)
        per_element = distance(student, teacher, reduction="none")  # (B, C, h, w); positions masked, channels kept
        return per_element.movedim(1, -1)[valid].mean() if bool(valid.any()) else per_element.sum() * 0


@LOSSES.register("hint")
class HintLoss(FeatureDistillation):
    """FitNets hint (Romero et al., ICLR 2015): MSE to a cached teacher layer through a learned regressor."""

    Params = HintParams


@LOSSES.register("feature_kd")
class FeatureKDLoss(FeatureDistillation):
    """Aux-layer / feature-map distillation (e.g. PSPNet's aux head): pixel-wise KL at T, or SmoothL1."""

    Params = FeatureKDParams
