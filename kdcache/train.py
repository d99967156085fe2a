"""The training loop used by pipelines: stages of (losses, optimiser, epochs), teacher targets cached or live.

The loop never builds a teacher for cached KD: targets arrive with the batch. For the online baseline a
:class:`LiveTeacher` computes the same targets each step with the same extraction code, so both feed the losses
identical kinds of tensors.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Any, Protocol

import torch
from torch import nn
from tqdm.auto import tqdm

from kdcache.capture import LayerCapture, forward_with_capture
from kdcache.config import OptimizerConfig, StageConfig
from kdcache.losses import LossSetup, StepOutputs, build_objective
from kdcache.metrics import Accuracy
from kdcache.precompute import teacher_outputs
from kdcache.stream import Batch, ViewDataset, batch_loader, set_loader_epoch
from kdcache.targets import Target


class TargetSource(Protocol):
    def __call__(self, batch: Batch) -> dict[str, Any]: ...


def cached_targets(batch: Batch) -> dict[str, Any]:
    """Targets that came with the batch from the store (already decoded on the device)."""
    return batch.targets


class LiveTeacher:
    """The online-KD target source: runs the frozen teacher on each batch (the teacher lives on the device)."""

    def __init__(self, teacher: nn.Module, targets: list[Target], device: torch.device) -> None:
        self.teacher = teacher.eval().to(device)
        self.targets = targets
        layers = sorted({layer for t in targets for layer in t.teacher_layers()})
        self.capture = LayerCapture(self.teacher, layers)

    def __call__(self, batch: Batch) -> dict[str, Any]:
        _, values = teacher_outputs(self.teacher, self.capture, batch.inputs, self.targets)
        return values


@dataclass
class EpochLog:
    stage: str
    epoch: int
    train_loss: float
    parts: dict[str, float]
    metrics: dict[str, float]
    seconds: float


@dataclass
class TrainResult:
    history: list[EpochLog] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def final(self) -> dict[str, float]:
        return self.history[-1].metrics if self.history else {}


def build_optimizer(params: list[nn.Parameter], cfg: OptimizerConfig) -> torch.optim.Optimizer:
    if cfg.name == "sgd":
        return torch.optim.SGD(params, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay, nesterov=True)
    cls = torch.optim.Adam if cfg.name == "adam" else torch.optim.AdamW
    return cls(params, lr=cfg.lr, weight_decay=cfg.weight_decay)


def freeze(model: nn.Module, prefixes: list[str]) -> list[nn.Module]:
    """Stop gradients to parameters under ``prefixes`` (module paths); returns the frozen modules (kept in eval)."""
    frozen = [m for name, m in model.named_modules() if name and any(_under(name, p) for p in prefixes)]
    for name, param in model.named_parameters():
        param.requires_grad_(not any(_under(name, p) for p in prefixes))
    return frozen


def _under(name: str, prefix: str) -> bool:
    return name == prefix or name.startswith(prefix + ".")


@torch.no_grad()
def evaluate(
    model: nn.Module, data: ViewDataset, *, batch_size: int, device: torch.device, ignore_index: int = -100
) -> dict[str, float]:
    """Top-1 accuracy of ``model`` on ``data`` (view 0, dataset order)."""
    model.eval()
    accuracy = Accuracy(ignore_index)
    for batch in batch_loader(data, batch_size=batch_size, shuffle=False):
        batch = batch.to(device)
        accuracy.update(model(batch.inputs), batch.labels)
    return {"accuracy": accuracy.compute()}


def fit(
    student: nn.Module,
    train_data: ViewDataset,
    test_data: ViewDataset | None,
    *,
    stages: list[StageConfig],
    setup: LossSetup,
    batch_size: int,
    seed: int,
    device: torch.device | str = "cpu",
    targets: TargetSource = cached_targets,
    num_workers: int = 0,
    progress: bool = True,
    desc: str = "train",
) -> TrainResult:
    """Train ``student`` through ``stages`` in order, evaluating on ``test_data`` after every epoch."""
    device = torch.device(device)
    student.to(device)
    result = TrainResult()
    loader = batch_loader(
        train_data, batch_size=batch_size, seed=seed, num_workers=num_workers, pin_memory=device.type == "cuda"
    )
    epoch_index = 0
    start = time.perf_counter()
    for stage in stages:
        objective = build_objective([(l.name, l.weight, l.params) for l in stage.losses], setup).to(device)
        frozen = freeze(student, stage.freeze)
        bar = tqdm(range(stage.epochs), desc=f"{desc}:{stage.name}", unit="epoch", disable=not progress, leave=False)
        with LayerCapture(student, objective.student_layers()) as capture:
            set_loader_epoch(loader, epoch_index)
            _prepare(student, objective, loader, capture, targets, device)
            params = [p for p in [*student.parameters(), *objective.parameters()] if p.requires_grad]
            optimizer = build_optimizer(params, stage.optimizer)
            schedule = _schedule(optimizer, stage.optimizer, stage.epochs * len(loader))
            for _ in bar:
                tick = time.perf_counter()
                set_loader_epoch(loader, epoch_index)
                loss, parts = _train_epoch(
                    student, frozen, objective, loader, capture, optimizer, schedule, targets, device
                )
                metrics = (
                    {}
                    if test_data is None
                    else evaluate(
                        student,
                        test_data,
                        batch_size=max(batch_size, 256),
                        device=device,
                        ignore_index=setup.ignore_index,
                    )
                )
                result.history.append(
                    EpochLog(stage.name, epoch_index, loss, parts, metrics, time.perf_counter() - tick)
                )
                bar.set_postfix(loss=f"{loss:.4f}", **{k: f"{v:.4f}" for k, v in metrics.items()})
                epoch_index += 1
        freeze(student, [])
    result.seconds = time.perf_counter() - start
    return result


@torch.no_grad()
def _prepare(
    student: nn.Module,
    objective: nn.Module,
    loader: Any,
    capture: LayerCapture,
    targets: TargetSource,
    device: torch.device,
) -> None:
    """Show the objective one batch (student in eval mode, so no statistics move) to build data-shaped parameters."""
    batch = next(iter(loader)).to(device)
    student.eval()
    outputs = forward_with_capture(student, batch.inputs, capture)
    objective.prepare(StepOutputs(outputs.logits, batch.labels, outputs.features, targets(batch)))


def _train_epoch(
    student: nn.Module,
    frozen: list[nn.Module],
    objective: nn.Module,
    loader: Any,
    capture: LayerCapture,
    optimizer: torch.optim.Optimizer,
    schedule: torch.optim.lr_scheduler.LRScheduler,
    targets: TargetSource,
    device: torch.device,
) -> tuple[float, dict[str, float]]:
    student.train()
    objective.train()
    for module in frozen:
        module.eval()
    total, count, parts_sum = 0.0, 0, {}
    for batch in loader:
        batch = batch.to(device)
        outputs = forward_with_capture(student, batch.inputs, capture)
        step = StepOutputs(
            logits=outputs.logits, labels=batch.labels, features=outputs.features, teacher=targets(batch)
        )
        loss, parts = objective(step)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        schedule.step()
        n = len(batch.labels)
        total += float(loss.detach()) * n
        count += n
        for k, v in parts.items():
            parts_sum[k] = parts_sum.get(k, 0.0) + v * n
    return total / max(count, 1), {k: v / max(count, 1) for k, v in parts_sum.items()}


def _schedule(
    optimizer: torch.optim.Optimizer, cfg: OptimizerConfig, steps: int
) -> torch.optim.lr_scheduler.LRScheduler:
    if cfg.schedule == "cosine" and steps > 0:
        return torch.optim.lr_scheduler.LambdaLR(
            optimizer, lambda s: 0.5 * (1 + math.cos(math.pi * min(s, steps) / steps))
        )
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: 1.0)
