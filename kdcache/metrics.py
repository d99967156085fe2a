"""Evaluation metrics accumulated over batches: accuracy (per sample, per pixel or per token), mIoU with pixel
accuracy from a confusion matrix for segmentation, and perplexity for language models.

A metric keeps counts (``state()``: integers, or float64 sums for perplexity) that add up across batches and across
processes, so a distributed evaluation sums the states of every rank and calls ``summarise`` once on the total.
"""

from __future__ import annotations

import math
from typing import Literal, Protocol, get_args

import torch
import torch.nn.functional as F

from kdcache.errors import ConfigError

Task = Literal["classification", "segmentation", "language-model"]
"""What a run learns, which decides the metrics evaluation reports: per sample, per pixel, or per next token."""
TASKS: tuple[Task, ...] = get_args(Task)

# The metrics each task reports, the primary one (compared and plotted) first.
TASK_METRICS: dict[Task, tuple[str, ...]] = {
    "classification": ("accuracy",),
    "segmentation": ("miou", "pixel_accuracy"),
    "language-model": ("perplexity", "token_accuracy"),
}
METRIC_TITLES = {
    "accuracy": "accuracy",
    "miou": "mIoU",
    "pixel_accuracy": "pixel accuracy",
    "perplexity": "perplexity",
    "token_accuracy": "next-token accuracy",
}
LOWER_IS_BETTER = frozenset({"perplexity"})
"""Metrics where a smaller value is better; every other metric is a share, shown as a percentage."""


def metric_text(name: str, value: float | None) -> str:
    """A metric value for tables: shares as percentages, perplexity as a plain number."""
    if value is None:
        return "—"
    return f"{value:.2f}" if name in LOWER_IS_BETTER else f"{100 * value:.2f}%"


def class_dim(logits: torch.Tensor, labels: torch.Tensor) -> int:
    """The class dimension of ``logits``: the last for a language model's ``(B, L, V)`` logits with ``(B, L)``
    labels, else 1 (``(B, C)`` per sample, ``(B, C, H, W)`` per pixel)."""
    return -1 if logits.dim() == 3 and labels.dim() == 2 else 1


def match_spatial(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Dense logits ``(B, C, h, w)`` bilinearly resized to the label map's ``(H, W)``; other logits unchanged."""
    if logits.dim() == 4 and logits.shape[-2:] != labels.shape[-2:]:
        return F.interpolate(logits, size=labels.shape[-2:], mode="bilinear", align_corners=False)
    return logits


class Metric(Protocol):
    """What evaluation needs of a metric: batch updates, summable integer counts, and their summary."""

    def update(self, logits: torch.Tensor, labels: torch.Tensor) -> None: ...

    def state(self) -> torch.Tensor: ...

    def summarise(self, state: torch.Tensor) -> dict[str, float]: ...


class Accuracy:
    """Top-1 accuracy over samples, labelled pixels (segmentation) or labelled tokens (language models: the
    next-token accuracy), ``ignore_index`` excluded."""

    def __init__(self, ignore_index: int = -100) -> None:
        self.ignore_index = ignore_index
        self.correct = 0
        self.count = 0

    @torch.no_grad()
    def update(self, logits: torch.Tensor, labels: torch.Tensor) -> None:
        predictions = match_spatial(logits, labels).argmax(dim=class_dim(logits, labels))
        valid = labels != self.ignore_index
        self.correct += int((predictions == labels)[valid].sum())
        self.count += int(valid.sum())

    def compute(self) -> float:
        return self.correct / self.count if self.count else float("nan")

    def state(self) -> torch.Tensor:
        return torch.tensor([self.correct, self.count], dtype=torch.int64)

    def summarise(self, state: torch.Tensor) -> dict[str, float]:
        correct, count = state.tolist()
        return {"accuracy": correct / count if count else float("nan")}


class ConfusionMatrix:
    """Pixel counts by (true class, predicted class) over labelled pixels; mIoU and pixel accuracy from them.

    IoU_c = TP_c / (TP_c + FP_c + FN_c) (Everingham et al. 2010, the PASCAL VOC measure). mIoU averages IoU over
    the classes present in the ground truth or the predictions of the evaluated pixels; a class absent from both has
    no defined IoU and is left out, as is standard. Pixel accuracy is the share of labelled pixels predicted right.
    Logits are upsampled to the label size (bilinear) before the argmax; ``ignore_index`` pixels are not counted.
    """

    def __init__(self, num_classes: int, ignore_index: int = -100) -> None:
        self.num_classes = num_classes
        self.ignore_index = ignore_index
        self.matrix = torch.zeros(num_classes, num_classes, dtype=torch.int64)

    @torch.no_grad()
    def update(self, logits: torch.Tensor, labels: torch.Tensor) -> None:
        predictions = match_spatial(logits, labels).argmax(dim=1)
        valid = labels != self.ignore_index
        truth, predicted = labels[valid], predictions[valid]
        if truth.numel() and (int(truth.min()) < 0 or int(truth.max()) >= self.num_classes):
            raise ConfigError(
                f"labels hold values outside 0..{self.num_classes - 1} besides ignore_index={self.ignore_index}: "
                f"found {sorted(set(truth.unique().tolist()) - set(range(self.num_classes)))[:10]}. Set "
                "data.num_classes and data.ignore_index to the dataset's"
            )
        cells = torch.bincount(truth * self.num_classes + predicted, minlength=self.num_classes**2)
        self.matrix += cells.cpu().view(self.num_classes, self.num_classes)

    def state(self) -> torch.Tensor:
        return self.matrix.clone()

    def summarise(self, state: torch.Tensor) -> dict[str, float]:
        return segmentation_scores(state)


class Perplexity:
    """Perplexity exp(mean NLL) of a language model's next-token predictions and its next-token accuracy, over the
    labelled positions of ``(B, L, V)`` logits (``ignore_index`` excluded: padding, the stream's last token).

    The state is the NLL summed in float64, the labelled positions and the correct predictions: ranks add them.
    """

    def __init__(self, ignore_index: int = -100) -> None:
        self.ignore_index = ignore_index
        self.totals = torch.zeros(3, dtype=torch.float64)  # NLL sum, labelled positions, correct predictions

    @torch.no_grad()
    def update(self, logits: torch.Tensor, labels: torch.Tensor) -> None:
        if logits.dim() != 3 or labels.shape != logits.shape[:2]:
            raise ConfigError(
                f"perplexity needs (batch, positions, vocabulary) logits and (batch, positions) labels; got "
                f"{tuple(logits.shape)} and {tuple(labels.shape)}. data.task: language-model is for language models"
            )
        valid = labels != self.ignore_index
        rows, targets = logits[valid].double(), labels[valid]
        nll = F.cross_entropy(rows, targets, reduction="sum") if len(rows) else rows.new_zeros(())
        hits = (rows.argmax(dim=-1) == targets).sum() if len(rows) else 0
        self.totals += torch.tensor([float(nll), float(len(rows)), float(hits)], dtype=torch.float64)

    def state(self) -> torch.Tensor:
        return self.totals.clone()

    def summarise(self, state: torch.Tensor) -> dict[str, float]:
        nll, count, hits = state.tolist()
        if not count:
            return {"perplexity": float("nan"), "token_accuracy": float("nan")}
        return {"perplexity": math.exp(nll / count), "token_accuracy": hits / count}


def segmentation_scores(matrix: torch.Tensor) -> dict[str, float]:
    """mIoU (over classes present in truth or prediction) and pixel accuracy of a ``(C, C)`` confusion matrix."""
    matrix = matrix.double()
    tp = matrix.diag()
    union = matrix.sum(dim=0) + matrix.sum(dim=1) - tp
    present = union > 0
    total = matrix.sum()
    return {
        "miou": float((tp[present] / union[present]).mean()) if bool(present.any()) else float("nan"),
        "pixel_accuracy": float(tp.sum() / total) if total > 0 else float("nan"),
    }


def task_metric(task: Task, num_classes: int, ignore_index: int = -100) -> Metric:
    """A fresh metric for ``task``: :class:`Accuracy` (classification), :class:`ConfusionMatrix` (segmentation) or
    :class:`Perplexity` (language-model)."""
    if task not in TASKS:
        raise ConfigError(f"unknown task {task!r}; valid tasks: {', '.join(TASKS)}")
    if task == "segmentation":
        return ConfusionMatrix(num_classes, ignore_index)
    if task == "language-model":
        return Perplexity(ignore_index)
    return Accuracy(ignore_index)
