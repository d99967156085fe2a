"""Losses of the KD literature, registered by name for pipeline files. See docs/losses.md."""

from __future__ import annotations

from kdcache.losses import feature as _feature  # noqa: F401  (registers fsp, hint, feature_kd)
from kdcache.losses import online as _online  # noqa: F401  (registers rocket_hint)
from kdcache.losses import relation as _relation  # noqa: F401  (registers rkd_distance, rkd_angle)
from kdcache.losses import response as _response  # noqa: F401  (registers ce, kd)
from kdcache.losses import tokens as _tokens  # noqa: F401  (registers next_token, token_kd)
from kdcache.losses.base import (
    LOSSES,
    LossParams,
    LossSetup,
    LossTerm,
    Objective,
    StepOutputs,
    check_student_width,
    check_task_classes,
)
from kdcache.losses.online import logit_hint
from kdcache.losses.relation import rkd_angles, rkd_distances
from kdcache.losses.response import check_teacher_width, kd_divergence, topk_kd_divergence
from kdcache.losses.tokens import (
    reverse_kd_divergence,
    sampled_kd_cross_entropy,
    token_kd_divergence,
    topk_reverse_kd_divergence,
    topk_token_divergence,
)
from kdcache.targets.fsp import fsp_matrix


def build_objective(entries: list[tuple[str, float, dict]], setup: LossSetup) -> Objective:
    """An :class:`Objective` from ``(name, weight, params)`` entries; repeated names get a ``#n`` suffix."""
    terms: dict[str, tuple[float, LossTerm]] = {}
    for name, weight, params in entries:
        cls = LOSSES.get(name)
        key = name if name not in terms else f"{name}#{len(terms)}"
        terms[key] = (weight, cls(cls.Params.model_validate(params), setup))
    return Objective(terms)


__all__ = [
    "LOSSES",
    "LossParams",
    "LossSetup",
    "LossTerm",
    "Objective",
    "StepOutputs",
    "build_objective",
    "check_student_width",
    "check_task_classes",
    "check_teacher_width",
    "fsp_matrix",
    "kd_divergence",
    "logit_hint",
    "reverse_kd_divergence",
    "rkd_angles",
    "rkd_distances",
    "sampled_kd_cross_entropy",
    "token_kd_divergence",
    "topk_kd_divergence",
    "topk_reverse_kd_divergence",
    "topk_token_divergence",
]
