"""Dense (per-pixel) maps in losses: matching one map's size to another's, and which positions carry labels."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def resize_to(student: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
    """``student`` ``(B, C, h, w)`` bilinearly resized to ``teacher``'s spatial size; unchanged when they agree."""
    if student.dim() == 4 and student.shape[-2:] != teacher.shape[-2:]:
        return F.interpolate(student, size=teacher.shape[-2:], mode="bilinear", align_corners=False)
    return student


def labelled_positions(labels: torch.Tensor, size: torch.Size | tuple[int, int], ignore_index: int) -> torch.Tensor:
    """``(B, h, w)`` bool: the positions of an ``(h, w)`` map that cover at least one labelled pixel.

    ``labels`` is the ``(B, H, W)`` label map. At the label resolution this is ``labels != ignore_index``; at a
    coarser resolution (a network's native 1/8 output) a position is kept unless every label pixel under it is
    ignored (max-pooling the valid mask over each position's footprint), so void outlines thinner than a cell do not
    remove cells that also hold object or background pixels, while padded or fully void regions are left out.
    """
    valid = labels != ignore_index
    if tuple(valid.shape[-2:]) == tuple(size):
        return valid
    return F.adaptive_max_pool2d(valid[:, None].float(), tuple(size))[:, 0] > 0
