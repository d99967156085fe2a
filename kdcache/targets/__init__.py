"""Target kinds: what is cached from a teacher. ``build_target(spec)`` turns a pipeline entry into a Target."""

from __future__ import annotations

from typing import Any

from kdcache.targets import logits as _logits  # noqa: F401  (registers the kind)
from kdcache.targets.base import TARGETS, StoredArray, Target, TargetParams, TeacherOutputs, check_finite, check_fits


def build_target(kind: str, params: dict[str, Any]) -> Target:
    """A target of the registered ``kind`` with validated ``params``."""
    cls = TARGETS.get(kind)
    return cls(cls.Params.model_validate(params))


__all__ = [
    "TARGETS",
    "StoredArray",
    "Target",
    "TargetParams",
    "TeacherOutputs",
    "build_target",
    "check_finite",
    "check_fits",
]
