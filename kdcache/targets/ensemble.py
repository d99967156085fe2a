"""Several cached teachers as one target: the mean of their logits, or the mean of their probabilities.

An ensemble is read from one store that holds every member (``teachers/<name>`` each, same dataset and views).
Its decoder decodes each member's arrays with that member's own target and combines them:

* ``mode="logits"``: z̄ = (1/M) Σ_m z_m, a plain logits tensor, so every loss that reads logits works unchanged.
  At temperature T the soft target is softmax(z̄ / T), the normalised *geometric* mean of the members'
  softmax(z_m / T).
* ``mode="probs"``: a :class:`ProbabilityEnsemble`; at temperature T the soft target is the *arithmetic* mean
  (1/M) Σ_m softmax(z_m / T). It depends on T, so it stays a set of member logits until a loss picks T.

Hinton, Vinyals & Dean 2015, "Distilling the Knowledge in a Neural Network", §1: an ensemble's soft targets are an
arithmetic or a geometric mean of the members' predictive distributions; these are the two modes.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

from kdcache.registry import LazyModule
from kdcache.targets.base import Target

if TYPE_CHECKING:
    import torch
    import torch.nn.functional as F
else:
    torch = LazyModule("torch")
    F = LazyModule("torch.nn.functional")

EnsembleMode = Literal["logits", "probs"]


@dataclass(frozen=True)
class Ensemble:
    """Which cached teachers stage two learns from, and how their outputs are combined."""

    members: tuple[str, ...]
    mode: EnsembleMode = "logits"


@dataclass
class ProbabilityEnsemble:
    """Member logits ``(M, B, C, ...)`` whose soft target at temperature T is the mean of the members' softmax."""

    members: torch.Tensor

    def log_probs(self, temperature: float) -> torch.Tensor:
        """log((1/M) Σ_m softmax(z_m / T)) over classes (dim 1 of each member), computed in log space."""
        per_member = F.log_softmax(self.members.float() / temperature, dim=2)
        return torch.logsumexp(per_member, dim=0) - math.log(self.members.shape[0])


class EnsembleDecoder:
    """Decodes ``<member>/<array>`` stored arrays with each member's target and combines them as ``mode`` says."""

    def __init__(self, members: dict[str, Target], mode: EnsembleMode) -> None:
        self.members = members
        self.mode = mode

    def decode(self, arrays: dict[str, torch.Tensor]) -> Any:
        decoded = []
        for name, target in self.members.items():
            own = {rel.removeprefix(f"{name}/"): a for rel, a in arrays.items() if rel.startswith(f"{name}/")}
            decoded.append(target.decode(own))
        stacked = torch.stack(decoded)
        return stacked.mean(dim=0) if self.mode == "logits" else ProbabilityEnsemble(stacked)


def soft_log_probs(teacher: torch.Tensor | ProbabilityEnsemble, temperature: float) -> torch.Tensor:
    """The teacher's log soft targets at ``temperature``, classes on dim 1: log softmax(z / T) for logits, the log of
    the mean member distribution for a :class:`ProbabilityEnsemble`."""
    if isinstance(teacher, ProbabilityEnsemble):
        return teacher.log_probs(temperature)
    return F.log_softmax(teacher.float() / temperature, dim=1)
