"""The loss contract: a term reads the student's outputs and the teacher's targets, cached or live alike."""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Any, ClassVar, cast

import torch
from pydantic import BaseModel, ConfigDict
from torch import nn

from kdcache.errors import ConfigError
from kdcache.metrics import Task
from kdcache.registry import Registry


class LossParams(BaseModel):
    """Base of every loss's parameters: unknown keys are errors."""

    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)  # a NaN temperature trains NaNs


@dataclass(frozen=True)
class LossSetup:
    """Facts about the task every loss may need."""

    num_classes: int
    ignore_index: int = -100
    task: Task = "classification"  # which metrics evaluation reports (kdcache.metrics)


def check_task_classes(logits: torch.Tensor, labels: torch.Tensor, setup: LossSetup) -> None:
    """Refuse a student whose class dimension is not the task's class count, or labels past that count.

    Cross-entropy would otherwise fail on the first label past the width with ``IndexError: Target 7 is out of
    bounds`` (a device-side assert on CUDA), naming neither the student nor the setting to change. Classes are the
    last dimension for a language model, dimension 1 otherwise. Reading the largest label costs one device sync, so
    the training loop calls this on its first batch (and :class:`~kdcache.losses.response.CrossEntropy` checks the
    width, which costs nothing, on every call).
    """
    check_student_width(logits, setup)
    valid = labels[labels != setup.ignore_index]
    if valid.numel() and not valid.is_floating_point() and (top := int(valid.max())) >= setup.num_classes:
        raise ConfigError(
            f"the labels reach class {top}, but the task has {setup.num_classes} classes (0..{setup.num_classes - 1}): "
            "set the class count to the data's (num_classes in Python, data.num_classes in a pipeline file), or keep "
            "only some classes (data.classes, relabelled 0..k-1)"
        )


def check_student_width(logits: torch.Tensor, setup: LossSetup) -> None:
    """Refuse student logits whose class dimension is not ``setup.num_classes`` (see :func:`check_task_classes`)."""
    dim = -1 if setup.task == "language-model" else 1
    width = logits.shape[dim] if logits.dim() >= 2 else None
    if width != setup.num_classes:
        raise ConfigError(
            f"the student outputs {width} classes (logits of shape {tuple(logits.shape)}), but the task has "
            f"{setup.num_classes}: build the student with num_classes={setup.num_classes} (a pipeline passes "
            "data.num_classes to the student's model; do not set another num_classes in student.model.args)"
        )


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

    def each_term(self) -> list[tuple[str, LossTerm]]:
        """The terms by name, typed as the terms they are (``nn.ModuleDict`` hands back plain modules)."""
        return [(name, cast(LossTerm, term)) for name, term in self.terms.items()]

    def teacher_targets(self) -> list[str]:
        return sorted({t for _, term in self.each_term() for t in term.teacher_targets()})

    def student_layers(self) -> list[str]:
        return sorted({layer for _, term in self.each_term() for layer in term.student_layers()})

    @torch.no_grad()
    def prepare(self, out: StepOutputs) -> None:
        """Let every term create its data-shaped parameters before the optimiser is built."""
        for _, term in self.each_term():
            term.prepare(out)

    def forward(self, out: StepOutputs) -> tuple[torch.Tensor, dict[str, float]]:
        total = out.logits.new_zeros(())
        parts: dict[str, float] = {}
        for name, term in self.terms.items():
            value = self.weights[name] * term(out)
            parts[name] = float(value.detach())
            total = total + value
        return total, parts
