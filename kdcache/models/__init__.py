"""Models by name or import path: ``build_model(arch, num_classes, args)``. kdcache's own architectures are examples
(digits CNNs, PSPNet, the two-headed networks of the schemes); any ``module:callable`` returning an ``nn.Module``
works the same way."""

from __future__ import annotations

import inspect
from typing import Any

from torch import nn

from kdcache.errors import ConfigError
from kdcache.models.digits import DigitsCNN, DigitsMLP, DigitsResNet
from kdcache.models.heads import MultiHeadNet
from kdcache.models.lm import CausalLM
from kdcache.models.pspnet import PSPNet
from kdcache.models.rocket import digits_rocket
from kdcache.registry import Registry, is_import_path

MODELS: Registry[Any] = Registry("model")
MODELS.register("digits-cnn")(DigitsCNN)
MODELS.register("digits-mlp")(DigitsMLP)
MODELS.register("digits-resnet")(DigitsResNet)
MODELS.register("digits-rocket")(digits_rocket)
MODELS.register("pspnet")(PSPNet)
MODELS.register("causal-lm")(CausalLM)


def build_model(arch: str, num_classes: int, args: dict[str, Any] | None = None) -> nn.Module:
    """The model ``arch`` with ``num_classes`` outputs: a registered architecture (called with ``num_classes`` and
    ``args``), or an import path such as ``torchvision.models:resnet18`` or ``timm:create_model`` (called with
    ``args``, plus ``num_classes`` when it takes that keyword and ``args`` does not set it). A wrong argument names
    the architecture and the argument."""
    factory = MODELS.resolve(arch)
    kwargs = dict(args or {})
    try:
        if not is_import_path(arch):
            model = factory(num_classes, **kwargs)
        else:
            if "num_classes" not in kwargs and _takes(factory, "num_classes"):
                kwargs["num_classes"] = num_classes
            model = factory(**kwargs)
    except TypeError as exc:
        raise ConfigError(f"model {arch!r} rejected its arguments {kwargs}: {exc}") from None
    if not isinstance(model, nn.Module):
        raise ConfigError(f"model {arch!r} returned a {type(model).__name__}, not a torch.nn.Module")
    return model


def _takes(factory: Any, keyword: str) -> bool:
    """Whether ``factory`` accepts ``keyword`` (by name, or through ``**kwargs``)."""
    try:
        parameters = inspect.signature(factory).parameters.values()
    except (TypeError, ValueError):  # builtins without a signature: try it
        return True
    return any(p.name == keyword or p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters)


__all__ = [
    "MODELS",
    "CausalLM",
    "DigitsCNN",
    "DigitsMLP",
    "DigitsResNet",
    "MultiHeadNet",
    "PSPNet",
    "build_model",
    "digits_rocket",
]
