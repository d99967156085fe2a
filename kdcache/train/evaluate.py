"""Evaluation and what a training run reports: the test metric of a model, and the per-epoch history of a run."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn

from kdcache.metrics import Accuracy, Metric
from kdcache.train.data import ViewDataset
from kdcache.train.world import World, all_reduce_sum


@dataclass
class EpochLog:
    """One finished epoch: its stage, its mean training loss and weighted parts, test metrics and seconds."""

    stage: str
    epoch: int
    train_loss: float
    parts: dict[str, float]
    metrics: dict[str, float]
    seconds: float


@dataclass
class TrainResult:
    """The history of a :func:`~kdcache.train.fit` call and its training seconds."""

    history: list[EpochLog] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def final(self) -> dict[str, float]:
        return self.history[-1].metrics if self.history else {}


@torch.no_grad()
def evaluate(
    model: nn.Module,
    data: ViewDataset,
    *,
    batch_size: int,
    device: torch.device | str,
    ignore_index: int = -100,
    world: World | None = None,
    metric: Metric | None = None,
) -> dict[str, float]:
    """``metric`` of ``model`` on ``data`` (view 0, dataset order): top-1 accuracy by default, or e.g. a
    :class:`~kdcache.metrics.ConfusionMatrix` for mIoU and pixel accuracy. With several processes each rank
    evaluates a contiguous share of ``data`` and the counts are summed, so every rank returns the metric on all of it."""
    world = world or World()
    model.eval()
    metric = metric if metric is not None else Accuracy(ignore_index)
    share = np.array_split(np.arange(len(data)), world.world_size)[world.rank]
    for start in range(0, len(share), batch_size):
        batch = data[share[start : start + batch_size]].to(device)
        metric.update(model(batch.inputs), batch.labels)
    return metric.summarise(all_reduce_sum(world, metric.state()))
