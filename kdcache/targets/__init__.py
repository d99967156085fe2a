"""Target kinds: what is cached from a teacher. ``build_target(spec)`` turns a pipeline entry into a Target."""

from __future__ import annotations

from typing import Any

from kdcache.targets import features as _features  # noqa: F401  (registers features, embedding)
from kdcache.targets import fsp as _fsp  # noqa: F401  (registers fsp)
from kdcache.targets import logits as _logits  # noqa: F401  (registers logits)
from kdcache.targets import tokens as _tokens  # noqa: F401  (registers token_logits)
from kdcache.targets.base import TARGETS, StoredArray, Target, TargetParams, check_finite, check_fits
from kdcache.targets.ensemble import Ensemble, EnsembleDecoder, ProbabilityEnsemble
from kdcache.targets.extract import TargetExtractor
from kdcache.targets.features import embedding_of
from kdcache.targets.fsp import fsp_matrix
from kdcache.targets.logits import TopKLogits
from kdcache.targets.tokens import SampledTokens, TokenTopK


def build_target(kind: str, params: dict[str, Any]) -> Target:
    """A target of the registered ``kind`` with validated ``params``."""
    cls = TARGETS.get(kind)
    return cls(cls.Params.model_validate(params))


__all__ = [
    "TARGETS",
    "Ensemble",
    "EnsembleDecoder",
    "ProbabilityEnsemble",
    "SampledTokens",
    "StoredArray",
    "Target",
    "TargetExtractor",
    "TargetParams",
    "TokenTopK",
    "TopKLogits",
    "build_target",
    "check_finite",
    "check_fits",
    "embedding_of",
    "fsp_matrix",
]
