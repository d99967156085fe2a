"""A frozen model with hooks on the layers its targets read: model inputs in, every target's float32 value out.

The one piece that computes teacher targets, shared by stage one (what is cached), online KD (the live teacher of
stage two) and ``verify --recompute`` (the live value a cached one is compared with), so all three agree by
construction.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from kdcache.capture import LayerCapture, forward_with_capture
from kdcache.registry import LazyModule
from kdcache.targets.base import Target

if TYPE_CHECKING:
    import torch
    from torch import nn
else:
    torch = LazyModule("torch")
    nn = LazyModule("torch.nn")


class TargetExtractor:
    """``extractor(inputs) -> (logits, {target name: value})`` for a model in eval mode on ``device``.

    Not thread-safe: the layer capture holds the latest batch's activations. Use as a context manager (or call
    :meth:`close`) to remove the hooks.

    >>> with TargetExtractor(teacher, [build_target("logits", {})], "cpu") as extract:  # doctest: +SKIP
    ...     logits, values = extract(inputs)
    """

    def __init__(self, model: nn.Module, targets: list[Target], device: torch.device | str = "cpu") -> None:
        self.device = torch.device(device)
        self.model = model.eval().to(self.device)
        self.targets = list(targets)
        self.layers = sorted({layer for t in self.targets for layer in t.teacher_layers()})
        self.capture = LayerCapture(self.model, self.layers)

    def __call__(self, inputs: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        with torch.no_grad():
            outputs = forward_with_capture(self.model, inputs.to(self.device), self.capture)
            return outputs.logits, {t.name: t.extract(outputs) for t in self.targets}

    def close(self) -> None:
        self.capture.close()

    def __enter__(self) -> TargetExtractor:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
