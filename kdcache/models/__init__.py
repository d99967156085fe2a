"""Model zoo, looked up by name from pipeline files: ``build_model(arch, num_classes, **args)``."""

from __future__ import annotations

from typing import Any

from torch import nn

from kdcache.errors import ConfigError
from kdcache.models.digits import DigitsCNN, DigitsMLP, DigitsResNet
from kdcache.models.heads import MultiHeadNet
from kdcache.models.lm import CausalLM
from kdcache.models.pspnet import PSPNet
from kdcache.models.rocket import digits_rocket
from kdcache.registry import Registry

MODELS: Registry[Any] = Registry("model")
MODELS.register("digits-cnn")(DigitsCNN)
MODELS.register("digits-mlp")(DigitsMLP)
MODELS.register("digits-resnet")(DigitsResNet)
MODELS.register("digits-rocket")(digits_rocket)
MODELS.register("pspnet")(PSPNet)
MODELS.register("causal-lm")(CausalLM)


def build_model(arch: str, num_classes: int, args: dict[str, Any] | None = None) -> nn.Module:
    """Instantiate the registered architecture ``arch``; a wrong argument names the architecture and the argument."""
    factory = MODELS.get(arch)
    try:
        return factory(num_classes, **(args or {}))
    except TypeError as exc:
        raise ConfigError(f"model {arch!r} rejected its arguments {args}: {exc}") from None


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
