"""Capturing intermediate layers by module path (``layer2``, ``layer3.1.relu``) with forward hooks.

The same code serves the frozen teacher in stage one and the live student in stage two, so a target computed from a
student's capture is comparable with the cached teacher's.
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from kdcache.errors import LayerNotFoundError, TargetMismatchError
from kdcache.registry import LazyModule

if TYPE_CHECKING:
    import torch
    from torch import nn
else:
    torch = LazyModule("torch")
    nn = LazyModule("torch.nn")


@dataclass
class ModelOutputs:
    """What one forward pass of a model gives targets and losses: logits plus the captured layers by module path."""

    logits: torch.Tensor
    features: dict[str, torch.Tensor] = field(default_factory=dict)


def find_module(model: nn.Module, path: str) -> nn.Module:
    """The submodule at ``path``; a miss lists the nearest valid paths."""
    modules = dict(model.named_modules())
    if path in modules and path:
        return modules[path]
    names = [n for n in modules if n]
    close = difflib.get_close_matches(path, names, n=5, cutoff=0.5)
    hint = f" Nearest: {', '.join(close)}." if close else ""
    top = ", ".join(n for n in names if "." not in n)
    raise LayerNotFoundError(
        f"{type(model).__name__} has no layer {path!r}.{hint} Top-level layers: {top}. Use a dotted module path "
        "as printed by model.named_modules()"
    )


class LayerCapture:
    """Keeps the latest output of each named layer while registered (use as a context manager or call close)."""

    def __init__(self, model: nn.Module, layers: list[str]) -> None:
        self.outputs: dict[str, torch.Tensor] = {}
        self._handles = [find_module(model, name).register_forward_hook(self._hook(name)) for name in layers]

    def _hook(self, name: str):
        def store(_module: nn.Module, _inputs: object, output: torch.Tensor) -> None:
            self.outputs[name] = output

        return store

    def close(self) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles.clear()

    def __enter__(self) -> LayerCapture:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def forward_with_capture(model: nn.Module, inputs: torch.Tensor, capture: LayerCapture | None) -> ModelOutputs:
    """Run ``model`` and collect its logits with the layers ``capture`` watches.

    A model may return its logits or an output object that holds them as ``.logits`` (a ``transformers`` model as
    its users have it: ``CausalLMOutputWithPast``), so a raw Hugging Face model works as a teacher without an adapter.
    """
    if capture is not None:
        capture.outputs.clear()
    logits = model_logits(model(inputs), model)
    features = dict(capture.outputs) if capture is not None else {}
    return ModelOutputs(logits=logits, features=features)


def model_logits(output: object, model: nn.Module) -> torch.Tensor:
    """The logits of a forward pass: the output itself, or its ``.logits`` field."""
    logits = output if isinstance(output, torch.Tensor) else getattr(output, "logits", None)
    if not isinstance(logits, torch.Tensor):
        raise TargetMismatchError(
            f"{type(model).__name__} returned a {type(output).__name__}, which is neither a logits tensor nor an "
            "output with a .logits tensor; make its forward return the logits"
        )
    return logits
