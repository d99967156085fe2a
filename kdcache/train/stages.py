"""What a training run is made of: stages of (epochs, optimiser, weighted losses, frozen modules).

These models are stage two's own description of training; pipeline files use them as they are, and Python callers
build them directly: ``StageConfig(epochs=3, losses=[LossConfig(name="ce", weight=0.1), LossConfig.model_validate(
{"name": "kd", "weight": 0.9, "temperature": 4})])``.
"""

from __future__ import annotations

import math
from typing import Literal

import torch
from pydantic import BaseModel, ConfigDict, Field
from torch import nn

from kdcache.losses import LOSSES, LossSetup
from kdcache.registry import RegisteredEntry


class Section(BaseModel):
    """A frozen config section that refuses unknown keys and NaN or infinite numbers."""

    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)  # `.nan` would train NaNs


class OptimizerConfig(Section):
    name: Literal["sgd", "adam", "adamw"] = "adam"
    lr: float = Field(default=1e-3, gt=0)
    momentum: float = 0.9
    weight_decay: float = 0.0
    schedule: Literal["constant", "cosine"] = "cosine"


class LossConfig(RegisteredEntry):
    """``{name: kd, weight: 0.9, temperature: 4}``: a loss term, its weight and its own parameters."""

    _registry = LOSSES
    name: str
    weight: float = 1.0

    def teacher_targets(self) -> list[str]:
        """Names of the cached teacher targets this loss reads."""
        cls = LOSSES.get(self.name)
        return cls(cls.Params.model_validate(self.params), LossSetup(num_classes=2)).teacher_targets()


class StageConfig(Section):
    name: str = "main"
    epochs: int = Field(ge=0)
    optimizer: OptimizerConfig = OptimizerConfig()
    losses: list[LossConfig] = Field(min_length=1)
    freeze: list[str] = []


def teacher_targets(stages: list[StageConfig]) -> list[str]:
    """Every teacher target the losses of ``stages`` read, sorted."""
    return sorted({t for stage in stages for loss in stage.losses for t in loss.teacher_targets()})


def build_optimizer(params: list[nn.Parameter], cfg: OptimizerConfig) -> torch.optim.Optimizer:
    if cfg.name == "sgd":
        return torch.optim.SGD(params, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay, nesterov=True)
    cls = torch.optim.Adam if cfg.name == "adam" else torch.optim.AdamW
    return cls(params, lr=cfg.lr, weight_decay=cfg.weight_decay)


def build_schedule(
    optimizer: torch.optim.Optimizer, cfg: OptimizerConfig, steps: int
) -> torch.optim.lr_scheduler.LambdaLR:
    """Cosine decay to 0 over ``steps`` optimiser steps, or a constant rate."""
    if cfg.schedule == "cosine" and steps > 0:
        return torch.optim.lr_scheduler.LambdaLR(
            optimizer, lambda s: 0.5 * (1 + math.cos(math.pi * min(s, steps) / steps))
        )
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: 1.0)


def retune(optimizer: torch.optim.Optimizer, schedule: torch.optim.lr_scheduler.LambdaLR, cfg: OptimizerConfig) -> None:
    """Give a restored optimiser and schedule the stage's configured base rate and weight decay. Unchanged values
    are left as restored; a change a resume was allowed to make (:mod:`kdcache.train.pinning`) applies from the next
    step, at the schedule's current position."""
    for i, group in enumerate(optimizer.param_groups):
        if group["initial_lr"] != cfg.lr:
            schedule.base_lrs[i] = group["initial_lr"] = cfg.lr
            group["lr"] = cfg.lr * schedule.lr_lambdas[i](schedule.last_epoch)
        group["weight_decay"] = cfg.weight_decay


def freeze(model: nn.Module, prefixes: list[str]) -> list[nn.Module]:
    """Stop gradients to parameters under ``prefixes`` (module paths); returns the frozen modules (kept in eval)."""
    frozen = [m for name, m in model.named_modules() if name and any(_under(name, p) for p in prefixes)]
    for name, param in model.named_parameters():
        param.requires_grad_(not any(_under(name, p) for p in prefixes))
    return frozen


def _under(name: str, prefix: str) -> bool:
    return name == prefix or name.startswith(prefix + ".")
