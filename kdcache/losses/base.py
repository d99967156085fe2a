"""The loss contract: a term reads the student's outputs and the teacher's targets, cached or live alike."""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch
from pydantic import BaseModel, ConfigDict
from torch import nn

from kdcache.registry import Registry


class LossParams(BaseModel):
    """Base of every loss's parameters: unknown keys are errors."""

    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)  # a NaN temperature trains NaNs


@dataclass(frozen=True)
class LossSetup:
    """Facts about the task every loss may need."""

    num_classes: int
    ignore_index: int = -100
    task: str = "classification"  # or "segmentation": which metrics evaluation reports (kdcache.metrics)


@dataclass
class StepOutputs:
    """One training step's tensors: the student's logits and captured layers, labels, and teacher targets by name.

    ``mix`` is set for mixed inputs (MixUp/CutMix views): ``(partner labels, weight)``, each input's label being
    ``weight · labels + (1 - weight) · partner labels``."""

    logits: torch.Tensor
    labels: torch.Tensor
    features: dict[str, torch.Tensor] = field(default_factory=dict)
    teacher: dict[str, Any] = field(default_factory=dict)
    mix: tuple[torch.Tensor, torch.Tensor] | None = None


class LossTerm(nn.Module, ABC):
    """One weighted term of the training objective; an ``nn.Module`` so learned parts (regressors) are trained."""

    Params: ClassVar[type[LossParams]] = LossParams

    def __init__(self, params: LossParams, setup: LossSetup) -> None:
        super().__init__()
        self.params = params
        self.setup = setup

    def teacher_targets(self) -> list[str]:
        """Names of the teacher targets this term reads (``logits``, ``fsp/layer1__layer2``, ...)."""
        return []

    def student_layers(self) -> list[str]:
        """Module paths of the student whose outputs this term reads."""
        return []

    def prepare(self, out: StepOutputs) -> None:
        """Create parameters whose shapes depend on the data (e.g. a regressor), given one batch; default: none."""

    @abstractmethod
    def forward(self, out: StepOutputs) -> torch.Tensor: ...


LOSSES: Registry[type[LossTerm]] = Registry("loss")


class Objective(nn.Module):
    """The weighted sum of a stage's loss terms; returns the total and each weighted part for logging."""

    def __init__(self, terms: dict[str, tuple[float, LossTerm]]) -> None:
        super().__init__()
        self.weights = {name: weight for name, (weight, _) in terms.items()}
        self.terms = nn.ModuleDict({name: term for name, (_, term) in terms.items()})

    def teacher_targets(self) -> list[str]:
        return sorted({t for term in self.terms.values() for t in term.teacher_targets()})

    def student_layers(self) -> list[str]:
        return sorted({layer for term in self.terms.values() for layer in term.student_layers()})

    @torch.no_grad()
    def prepare(self, out: StepOutputs) -> None:
        """Let every term create its data-shaped parameters before the optimiser is built."""
        for term in self.terms.values():
            term.prepare(out)

    def forward(self, out: StepOutputs) -> tuple[torch.Tensor, dict[str, float]]:
        total = out.logits.new_zeros(())
        parts: dict[str, float] = {}
        for name, term in self.terms.items():
            value = self.weights[name] * term(out)
            parts[name] = float(value.detach())
            total = total + value
        return total, parts
