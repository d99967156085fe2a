"""Booster and light nets for 8x8 digits that share their lower layers (Rocket Launching, Zhou et al., AAAI 2018).

Both nets are DigitsCNN-shaped: the shared lower layers are ``layer1`` (8x8), and each net stacks its own ``layer2``
(4x4), ``layer3`` (2x2), pooling and linear head on them, the light net narrow (the one deployed), the booster wide.
Both are heads of one :class:`MultiHeadNet` (``heads.light``, ``heads.booster``), which answers with the light net.
"""

from __future__ import annotations

from collections import OrderedDict

from torch import nn

from kdcache.models.digits import _conv_bn_relu
from kdcache.models.heads import MultiHeadNet


def _lower(in_channels: int, width: int) -> nn.Sequential:
    return _conv_bn_relu(in_channels, width, 1)


def _upper(c_in: int, width: int, num_classes: int) -> OrderedDict[str, nn.Module]:
    """The upper layers of either net: DigitsCNN's ``layer2``, ``layer3``, ``pool`` and ``fc`` at ``width``."""
    return OrderedDict(
        layer2=_conv_bn_relu(c_in, 2 * width, 2),
        layer3=_conv_bn_relu(2 * width, 4 * width, 2),
        pool=nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten()),
        fc=nn.Linear(4 * width, num_classes),
    )


def digits_rocket(
    num_classes: int = 10,
    *,
    shared_width: int = 8,
    booster_width: int = 32,
    light_width: int = 2,
    share: bool = True,
    in_channels: int = 1,
) -> MultiHeadNet:
    """Booster and light net over shared lower layers (``backbone``), or, with ``share=False``, each with lower layers
    of its own (the paper's no-sharing ablation; ``backbone`` is then the identity and each head starts with its own
    ``lower`` module)."""
    booster = _upper(shared_width, booster_width, num_classes)
    light = _upper(shared_width, light_width, num_classes)
    if share:
        backbone: nn.Module = _lower(in_channels, shared_width)
    else:
        backbone = nn.Identity()
        booster = OrderedDict(lower=_lower(in_channels, shared_width), **booster)
        light = OrderedDict(lower=_lower(in_channels, shared_width), **light)
    heads: dict[str, nn.Module] = {"booster": nn.Sequential(booster), "light": nn.Sequential(light)}
    return MultiHeadNet(backbone, heads, output="light")
