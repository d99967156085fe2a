"""PSPNet (Zhao et al., "Pyramid Scene Parsing Network", CVPR 2017) on torchvision ResNet backbones.

The backbone is torchvision's ``ResNet`` (``weights=None``: nothing is downloaded) with its last two stages dilated
instead of strided, so the output stride is 8 (PSPNet §3.2, as in DeepLab):

* **Bottleneck backbones** (resnet50, resnet101) use torchvision's own ``replace_stride_with_dilation=[False, True,
  True]``.
* **BasicBlock backbones** (resnet18, resnet34) refuse that flag (torchvision raises ``NotImplementedError``), so
  :func:`dilate_stage` rewrites the built stage the way torchvision's flag does for Bottlenecks: every stride-2
  convolution of ``layer3`` / ``layer4`` gets stride 1, the 3×3 convolution that had the stride keeps the previous
  stage's dilation, every later 3×3 convolution of the stage gets dilation 2 (``layer3``) or 4 (``layer4``), with
  padding equal to the dilation so sizes are kept. Teacher and student then have the same output stride and their
  aux-head and final maps the same spatial size.

``width`` scales every stage (torchvision's are 64, 128, 256, 512 planes; ``width=16`` makes them 16, 32, 64, 128)
so the architecture fits a CPU budget; ``width=64, in_channels=3`` is exactly ``torchvision.models.resnet50`` (resp.
resnet18) up to the classifier, which PSPNet does not use (tested).

Heads (PSPNet §3.3 and §4.1): the pyramid pooling module pools ``layer4`` to 1×1, 2×2, 3×3 and 6×6 bins, reduces
each to a quarter of the channels (1×1 conv, BN, ReLU), upsamples and concatenates them with ``layer4``; ``head``
is a 3×3 conv to a quarter of ``layer4``'s channels, BN, ReLU, dropout 0.1 and a 1×1 classifier. The auxiliary head
``aux`` on ``layer3`` is a 3×3 conv to a quarter of ``layer3``'s channels, BN, ReLU, dropout 0.1 and a 1×1
classifier; the paper trains it with weight 0.4 (``{name: ce, student_layer: aux, weight: 0.4}``). The model returns the main logits at their native
resolution (1/8 of the input); losses and metrics upsample to the label size. The aux output is read through a
forward hook on the module ``aux`` (``features/aux`` targets, ``ce`` with ``student_layer: aux`` and ``feature_kd`` losses).
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn
from torchvision.models.resnet import BasicBlock, Bottleneck, ResNet

from kdcache.errors import ConfigError

Backbone = Literal["resnet18", "resnet34", "resnet50", "resnet101"]
BACKBONES: dict[str, tuple[type[BasicBlock | Bottleneck], list[int]]] = {
    "resnet18": (BasicBlock, [2, 2, 2, 2]),
    "resnet34": (BasicBlock, [3, 4, 6, 3]),
    "resnet50": (Bottleneck, [3, 4, 6, 3]),
    "resnet101": (Bottleneck, [3, 4, 23, 3]),
}
PYRAMID_BINS = (1, 2, 3, 6)


class _ScaledResNet(ResNet):
    """torchvision's ``ResNet`` with every stage's planes scaled by ``width / 64`` and an ``in_channels`` stem.

    Only the plane counts change: blocks, strides, dilation and initialisation are torchvision's own code.
    """

    def __init__(self, block: type[BasicBlock | Bottleneck], layers: list[int], *, width: int, dilate: bool) -> None:
        self._width = width
        super().__init__(block, layers, replace_stride_with_dilation=[False, dilate, dilate])

    def _make_layer(self, block, planes, blocks, stride=1, dilate=False):
        if planes == 64:  # layer1: the stem has ``width`` channels (see _stem)
            self.inplanes = self._width
        return super()._make_layer(block, planes * self._width // 64, blocks, stride, dilate)


def resnet_backbone(name: Backbone, *, width: int = 64, in_channels: int = 3) -> ResNet:
    """A torchvision ResNet with output stride 8 (``layer3``/``layer4`` dilated), no pretrained weights."""
    if name not in BACKBONES:
        raise ConfigError(f"unknown PSPNet backbone {name!r}; choose one of {', '.join(BACKBONES)}")
    if width < 4 or width % 4:
        raise ConfigError(f"PSPNet width must be a positive multiple of 4 (channels are divided by 4), got {width}")
    block, layers = BACKBONES[name]
    net = _ScaledResNet(block, layers, width=width, dilate=block is Bottleneck)
    net.conv1 = nn.Conv2d(in_channels, width, kernel_size=7, stride=2, padding=3, bias=False)
    nn.init.kaiming_normal_(net.conv1.weight, mode="fan_out", nonlinearity="relu")
    net.bn1 = nn.BatchNorm2d(width)
    if block is BasicBlock:
        dilate_stage(net.layer3, 2)
        dilate_stage(net.layer4, 4)
    del net.avgpool, net.fc  # unused by PSPNet; parameters without gradients would trouble DDP
    return net


def dilate_stage(stage: nn.Sequential, dilation: int) -> None:
    """Turn a strided BasicBlock stage into a dilated one in place (output stride unchanged from the stage before).

    The strided 3×3 conv gets stride 1 and the previous dilation (``dilation // 2``); every other 3×3 conv gets
    ``dilation``; the strided 1×1 downsample gets stride 1. Padding equals dilation, so spatial sizes are kept.
    """
    for module in stage.modules():
        if not isinstance(module, nn.Conv2d):
            continue
        strided = module.stride == (2, 2)
        module.stride = (1, 1)
        if module.kernel_size == (3, 3):
            d = dilation // 2 if strided else dilation
            module.dilation, module.padding = (d, d), (d, d)


def _conv_bn_relu(c_in: int, c_out: int, kernel: int) -> list[nn.Module]:
    return [nn.Conv2d(c_in, c_out, kernel, padding=kernel // 2, bias=False), nn.BatchNorm2d(c_out), nn.ReLU(True)]


class PyramidPooling(nn.Module):
    """PSPNet's pyramid pooling module: ``x`` concatenated with each bin's pooled, reduced and upsampled map."""

    def __init__(self, channels: int, bins: tuple[int, ...] = PYRAMID_BINS) -> None:
        super().__init__()
        reduced = channels // len(bins)
        self.stages = nn.ModuleList(
            nn.Sequential(nn.AdaptiveAvgPool2d(b), *_conv_bn_relu(channels, reduced, 1)) for b in bins
        )
        self.out_channels = channels + reduced * len(bins)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        size = x.shape[-2:]
        pooled = [F.interpolate(s(x), size=size, mode="bilinear", align_corners=False) for s in self.stages]
        return torch.cat([x, *pooled], dim=1)


def _classifier(c_in: int, hidden: int, num_classes: int, dropout: float) -> nn.Sequential:
    """3×3 conv to ``hidden`` channels, BN, ReLU, dropout, 1×1 classifier (PSPNet's main and aux heads)."""
    return nn.Sequential(*_conv_bn_relu(c_in, hidden, 3), nn.Dropout2d(dropout), nn.Conv2d(hidden, num_classes, 1))


class PSPNet(nn.Module):
    """PSPNet with a dilated ResNet backbone; ``forward`` returns ``(B, num_classes, H/8, W/8)`` logits.

    Module paths: ``stem``, ``layer1``..``layer4`` (backbone), ``ppm``, ``head`` (main classifier) and ``aux``
    (auxiliary classifier on ``layer3``, run in training and evaluation alike so hooks always see it).

    >>> model = PSPNet(11, backbone="resnet18", width=16, in_channels=1)
    >>> tuple(model(torch.zeros(2, 1, 64, 64)).shape)
    (2, 11, 8, 8)
    """

    def __init__(
        self,
        num_classes: int,
        *,
        backbone: Backbone = "resnet50",
        width: int = 64,
        in_channels: int = 3,
        dropout: float = 0.1,
        bins: tuple[int, ...] = PYRAMID_BINS,
    ) -> None:
        super().__init__()
        net = resnet_backbone(backbone, width=width, in_channels=in_channels)
        self.stem = nn.Sequential(net.conv1, net.bn1, net.relu, net.maxpool)
        self.layer1, self.layer2, self.layer3, self.layer4 = net.layer1, net.layer2, net.layer3, net.layer4
        c3, c4 = net.inplanes // 2, net.inplanes  # layer3's and layer4's output channels
        self.ppm = PyramidPooling(c4, tuple(bins))
        # ResNet-50: 4096 -> 512 channels in the main head, 1024 -> 256 in the aux head (a quarter of the stage's)
        self.head = _classifier(self.ppm.out_channels, c4 // 4, num_classes, dropout)
        self.aux = _classifier(c3, c3 // 4, num_classes, dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.layer2(self.layer1(self.stem(x)))
        x = self.layer3(x)
        self.aux(x)  # read through a forward hook on ``aux`` (targets and losses), not returned
        return self.head(self.ppm(self.layer4(x)))
