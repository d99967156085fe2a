"""Evaluation metrics accumulated over batches: accuracy (per sample or per pixel), and mIoU with pixel accuracy
from a confusion matrix for segmentation.

A metric keeps integer counts (``state()``) that add up across batches and across processes, so a distributed
evaluation sums the states of every rank and calls ``summarise`` once on the total.
"""

from __future__ import annotations

from typing import Protocol

import torch
import torch.nn.functional as F

from kdcache.errors import ConfigError

# The metrics each task reports, the primary one (compared and plotted) first.
TASK_METRICS: dict[str, tuple[str, ...]] = {"classification": ("accuracy",), "segmentation": ("miou", "pixel_accuracy")}
METRIC_TITLES = {"accuracy": "accuracy", "miou": "mIoU", "pixel_accuracy": "pixel accuracy"}


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
    """Top-1 accuracy over samples, or over labelled pixels for segmentation (``ignore_index`` excluded)."""

    def __init__(self, ignore_index: int = -100) -> None:
        self.ignore_index = ignore_index
        self.correct = 0
        self.count = 0

    @torch.no_grad()
    def update(self, logits: torch.Tensor, labels: torch.Tensor) -> None:
        predictions = match_spatial(logits, labels).argmax(dim=1)
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


def task_metric(task: str, num_classes: int, ignore_index: int = -100) -> Metric:
    """A fresh metric for ``task``: :class:`Accuracy` (classification) or :class:`ConfusionMatrix` (segmentation)."""
    if task == "segmentation":
        return ConfusionMatrix(num_classes, ignore_index)
    return Accuracy(ignore_index)
