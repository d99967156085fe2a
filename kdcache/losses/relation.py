"""Relation-based losses on per-sample embeddings: RKD distance and angle (Park et al., CVPR 2019).

Relations are formed within each batch, so only per-sample teacher embeddings are cached (``embedding/<layer>``);
teacher and student embeddings may differ in width.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from pydantic import Field

from kdcache.losses.base import LOSSES, LossParams, LossTerm, StepOutputs
from kdcache.targets.features import embedding_of


def rkd_distances(embeddings: torch.Tensor) -> torch.Tensor:
    """ψ_D (Park et al., Eq. 4): pairwise Euclidean distances divided by their mean over distinct pairs."""
    d = torch.cdist(embeddings, embeddings)
    off_diagonal = ~torch.eye(len(d), dtype=torch.bool, device=d.device)
    return d / d[off_diagonal].mean().clamp_min(1e-12)


def rkd_angles(embeddings: torch.Tensor) -> torch.Tensor:
    """ψ_A (Park et al., Eq. 6): cosine of the angle at j of every triplet (i, j, k), ``(B, B, B)``."""
    e = F.normalize(embeddings.unsqueeze(0) - embeddings.unsqueeze(1), p=2, dim=2)  # e[j, i] = (t_i - t_j)/|..|
    return torch.bmm(e, e.transpose(1, 2))


class RKDParams(LossParams):
    target: str = Field(description="cached embedding, e.g. embedding/pool")
    student_layer: str | None = Field(None, description="student module path (default: the target's layer)")


class _RelationLoss(LossTerm):
    Params = RKDParams
    params: RKDParams

    def teacher_targets(self) -> list[str]:
        return [self.params.target]

    def student_layers(self) -> list[str]:
        return [self.params.student_layer or self.params.target.split("/", 1)[-1]]

    def embeddings(self, out: StepOutputs) -> tuple[torch.Tensor, torch.Tensor]:
        return embedding_of(out.features[self.student_layers()[0]]), out.teacher[self.params.target].float()


@LOSSES.register("rkd_distance")
class RKDDistance(_RelationLoss):
    """Distance-wise RKD (Park et al., Eq. 5): Huber loss between student and teacher ψ_D (teacher side fixed)."""

    def forward(self, out: StepOutputs) -> torch.Tensor:
        student, teacher = self.embeddings(out)
        return F.smooth_l1_loss(rkd_distances(student), rkd_distances(teacher))


@LOSSES.register("rkd_angle")
class RKDAngle(_RelationLoss):
    """Angle-wise RKD (Park et al., Eq. 7): Huber loss between student and teacher ψ_A over all triplets."""

    def forward(self, out: StepOutputs) -> torch.Tensor:
        student, teacher = self.embeddings(out)
        return F.smooth_l1_loss(rkd_angles(student), rkd_angles(teacher))
