"""Small CNNs for 8x8 digits: a wide teacher and a narrow student of the same shape of network."""

from __future__ import annotations

import torch
from torch import nn
from torchvision.models.resnet import BasicBlock


def _conv_bn_relu(c_in: int, c_out: int, stride: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(c_in, c_out, 3, stride=stride, padding=1, bias=False), nn.BatchNorm2d(c_out), nn.ReLU(inplace=True)
    )


class DigitsCNN(nn.Module):
    """Three conv stages (8x8 -> 4x4 -> 2x2) with ``width``, ``2*width``, ``4*width`` channels, then a linear head.

    Layers are named ``layer1..layer3``, ``pool`` (the per-sample embedding) and ``fc`` so targets and losses can
    address them by module path.
    """

    def __init__(self, num_classes: int = 10, *, width: int = 32, in_channels: int = 1, dropout: float = 0.0) -> None:
        super().__init__()
        self.layer1 = _conv_bn_relu(in_channels, width, 1)
        self.layer2 = _conv_bn_relu(width, 2 * width, 2)
        self.layer3 = _conv_bn_relu(2 * width, 4 * width, 2)
        self.pool = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.dropout = nn.Dropout(dropout)
        self.fc = nn.Linear(4 * width, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.layer3(self.layer2(self.layer1(x)))
        return self.fc(self.dropout(self.pool(x)))


class DigitsMLP(nn.Module):
    """A one-hidden-layer perceptron on the flattened image: the smallest useful student."""

    def __init__(self, num_classes: int = 10, *, hidden: int = 16, in_pixels: int = 64) -> None:
        super().__init__()
        self.flatten = nn.Flatten()
        self.hidden = nn.Sequential(nn.Linear(in_pixels, hidden), nn.ReLU(inplace=True))
        self.fc = nn.Linear(hidden, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.hidden(self.flatten(x)))


class DigitsResNet(nn.Module):
    """A small ResNet for 8x8 digits built from torchvision's ``BasicBlock``: stem, three stages, linear head.

    Stages ``layer1..layer3`` have ``width``, ``2*width``, ``4*width`` channels at 8x8, 4x4, 2x2 and ``blocks[i]``
    residual blocks each. Networks of equal width and different depth have FSP matrices of equal shape at
    ``(stem, layer1)``, ``(layer1, layer2)``, ``(layer2, layer3)``: the teacher/student setting of Yim et al. 2017.
    """

    def __init__(
        self, num_classes: int = 10, *, width: int = 16, blocks: tuple[int, int, int] = (1, 1, 1), in_channels: int = 1
    ) -> None:
        super().__init__()
        self.stem = _conv_bn_relu(in_channels, width, 1)
        self.layer1 = _stage(width, width, blocks[0], stride=1)
        self.layer2 = _stage(width, 2 * width, blocks[1], stride=2)
        self.layer3 = _stage(2 * width, 4 * width, blocks[2], stride=2)
        self.pool = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.fc = nn.Linear(4 * width, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.layer3(self.layer2(self.layer1(self.stem(x))))
        return self.fc(self.pool(x))


def _stage(c_in: int, c_out: int, blocks: int, *, stride: int) -> nn.Sequential:
    downsample = None
    if stride != 1 or c_in != c_out:
        downsample = nn.Sequential(nn.Conv2d(c_in, c_out, 1, stride=stride, bias=False), nn.BatchNorm2d(c_out))
    layers = [BasicBlock(c_in, c_out, stride=stride, downsample=downsample)]
    layers += [BasicBlock(c_out, c_out) for _ in range(blocks - 1)]
    return nn.Sequential(*layers)
