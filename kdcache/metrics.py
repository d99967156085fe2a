"""Evaluation metrics accumulated over batches: accuracy (per sample or per pixel)."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def match_spatial(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Dense logits ``(B, C, h, w)`` bilinearly resized to the label map's ``(H, W)``; other logits unchanged."""
    if logits.dim() == 4 and logits.shape[-2:] != labels.shape[-2:]:
        return F.interpolate(logits, size=labels.shape[-2:], mode="bilinear", align_corners=False)
    return logits


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
