"""PSPNet: main and aux output shapes on both backbones, torchvision's architecture at full width, dilation."""

from __future__ import annotations

import pytest
import torch
import torchvision
from torch import nn

from kdcache.capture import LayerCapture, forward_with_capture
from kdcache.errors import ConfigError
from kdcache.models import PSPNet, build_model
from kdcache.models.pspnet import resnet_backbone


@pytest.mark.parametrize(
    ("backbone", "width", "classes", "in_channels", "size", "native"),
    [
        ("resnet50", 16, 11, 1, (64, 64), (8, 8)),
        ("resnet18", 8, 11, 1, (64, 64), (8, 8)),
        ("resnet50", 8, 21, 3, (48, 80), (6, 10)),
        ("resnet18", 4, 3, 3, (50, 70), (7, 9)),  # not a multiple of 8: sizes follow the strided convolutions
    ],
    ids=["r50-digits", "r18-digits", "r50-voc-like", "r18-odd-size"],
)
def test_main_and_aux_outputs_have_native_resolution(backbone, width, classes, in_channels, size, native):
    torch.manual_seed(0)
    model = build_model("pspnet", classes, {"backbone": backbone, "width": width, "in_channels": in_channels})
    with LayerCapture(model, ["aux", "layer3", "layer4"]) as capture:
        for mode in (model.train, model.eval):  # the aux head runs (and is captured) in both modes
            mode()
            out = forward_with_capture(model, torch.randn(2, in_channels, *size), capture)
            assert tuple(out.logits.shape) == (2, classes, *native)
            assert tuple(out.features["aux"].shape) == (2, classes, *native)
    channels = {"resnet50": (16 * width, 32 * width), "resnet18": (4 * width, 8 * width)}[backbone]
    assert tuple(out.features["layer3"].shape) == (2, channels[0], *native)  # output stride 8 at layer3 ...
    assert tuple(out.features["layer4"].shape) == (2, channels[1], *native)  # ... and layer4 (dilated, not strided)


@pytest.mark.parametrize("backbone", ["resnet50", "resnet18"])
def test_full_width_backbone_is_torchvisions_resnet(backbone):
    dilation = {"replace_stride_with_dilation": [False, True, True]} if backbone == "resnet50" else {}
    reference = getattr(torchvision.models, backbone)(weights=None, **dilation)
    expected = {k: v.shape for k, v in reference.state_dict().items() if not k.startswith("fc.")}
    assert {k: v.shape for k, v in resnet_backbone(backbone).state_dict().items()} == expected


def test_resnet18_stages_are_dilated_like_torchvisions_bottleneck_rule():
    net = resnet_backbone("resnet18", width=8)
    convs = {name: m for name, m in net.named_modules() if isinstance(m, nn.Conv2d)}
    assert all(m.stride == (1, 1) for name, m in convs.items() if name.startswith(("layer3", "layer4")))
    found = {name: m.dilation[0] for name, m in convs.items() if m.kernel_size == (3, 3)}
    assert found["layer2.0.conv1"] == 1 and found["layer3.0.conv1"] == 1  # the conv that had the stride: previous
    assert found["layer3.0.conv2"] == found["layer3.1.conv1"] == found["layer3.1.conv2"] == 2
    assert found["layer4.0.conv1"] == 2 and found["layer4.0.conv2"] == found["layer4.1.conv2"] == 4
    assert all(convs[n].padding[0] == d for n, d in found.items())  # padding = dilation keeps the size


def test_pspnet_heads_follow_the_paper_ratios():
    model = PSPNet(11, backbone="resnet50", width=64, in_channels=3)
    assert [s[1].out_channels for s in model.ppm.stages] == [512] * 4  # 2048 / 4 per bin, bins 1, 2, 3, 6
    assert [s[0].output_size for s in model.ppm.stages] == [1, 2, 3, 6]
    assert (model.head[0].in_channels, model.head[0].out_channels) == (4096, 512)
    assert (model.aux[0].in_channels, model.aux[0].out_channels) == (1024, 256)


def test_bad_backbone_or_width_is_a_config_error():
    with pytest.raises(ConfigError, match=r"unknown PSPNet backbone 'resnet19'.*resnet18"):
        PSPNet(11, backbone="resnet19")
    with pytest.raises(ConfigError, match="multiple of 4"):
        PSPNet(11, backbone="resnet18", width=6)
