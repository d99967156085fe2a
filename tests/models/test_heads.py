"""Multi-head networks: heads addressable by module path, answering with one head, sharing modules when split."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from kdcache.capture import LayerCapture
from kdcache.errors import ConfigError
from kdcache.models import DigitsCNN, MultiHeadNet, build_model


@pytest.fixture
def net() -> MultiHeadNet:
    torch.manual_seed(0)
    net = MultiHeadNet.from_classifier(DigitsCNN(5, width=2), "fc", "old")
    net.add_linear_head("new", 3)
    return net.eval()


def test_from_classifier_keeps_the_network_and_its_weights():
    torch.manual_seed(0)
    single = DigitsCNN(5, width=2).eval()
    x = torch.randn(4, 1, 8, 8)
    expected = single(x)
    net = MultiHeadNet.from_classifier(copy.deepcopy(single), "fc", "old").eval()
    assert torch.equal(net(x), expected)
    assert isinstance(net.backbone.fc, nn.Identity) and net.heads["old"].out_features == 5


def test_every_head_runs_so_any_head_can_be_captured(net):
    x = torch.randn(4, 1, 8, 8)
    net.output = "new"
    with LayerCapture(net, ["heads.old", "heads.new"]) as capture:
        logits = net(x)
    assert logits.shape == (4, 3) and torch.equal(capture.outputs["heads.new"], logits)
    with net.answering("old"):
        assert torch.equal(net(x), capture.outputs["heads.old"])
    with net.answering("concat"):
        assert torch.equal(net(x), torch.cat([capture.outputs["heads.old"], logits], dim=1))
    assert net.output == "new"  # restored after the block


def test_keep_shares_modules_and_rejects_unknown_heads(net):
    old_only = net.keep(["old"])
    assert old_only.backbone is net.backbone and old_only.heads["old"] is net.heads["old"]
    assert list(old_only.heads) == ["old"] and old_only.output == "old"
    with pytest.raises(ConfigError, match=r"no head\(s\) \['booster'\]; this network has heads \['old', 'new'\]"):
        net.keep(["booster"])
    with pytest.raises(ConfigError, match=r"no head 'light'"):
        net.answering("light").__enter__()
    with pytest.raises(ConfigError, match=r"head 'new' already exists"):
        net.add_linear_head("new", 2)


@pytest.mark.parametrize("share", [True, False], ids=["shared", "separate"])
def test_rocket_network_shares_lower_layers_or_not(share):
    torch.manual_seed(0)
    net = build_model("digits-rocket", 10, {"shared_width": 4, "booster_width": 8, "light_width": 2, "share": share})
    assert set(net.heads) == {"booster", "light"} and net.output == "light"
    assert isinstance(net.backbone, nn.Identity) is not share
    lowers = [name for name, _ in net.named_modules() if name.endswith("lower")]
    assert lowers == ([] if share else ["heads.booster.lower", "heads.light.lower"])
    assert net(torch.randn(2, 1, 8, 8)).shape == (2, 10)
