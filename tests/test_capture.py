"""Layer capture by module path: the hooked outputs are the layer's outputs, hooks go away, and a wrong path lists
the nearest real ones. The same code serves teacher (stage one, online KD) and student."""

from __future__ import annotations

import pytest
import torch

from kdcache.capture import LayerCapture, find_module, forward_with_capture
from kdcache.errors import LayerNotFoundError
from kdcache.models import DigitsCNN
from kdcache.targets import TargetExtractor, build_target


def test_captured_layers_equal_the_layers_outputs() -> None:
    torch.manual_seed(0)
    model = DigitsCNN(10, width=4).eval()
    x = torch.rand(3, 1, 8, 8)
    with LayerCapture(model, ["layer2", "pool"]) as capture:
        out = forward_with_capture(model, x, capture)
    with torch.no_grad():
        layer2 = model.layer2(model.layer1(x))
        expected_pool = model.pool(model.layer3(layer2))
        torch.testing.assert_close(out.features["layer2"], layer2, rtol=0, atol=0)
        torch.testing.assert_close(out.features["pool"], expected_pool, rtol=0, atol=0)
        torch.testing.assert_close(out.logits, model(x), rtol=0, atol=0)
    assert not model.layer2._forward_hooks and not model.pool._forward_hooks  # removed on exit


def test_a_wrong_layer_lists_the_nearest_paths() -> None:
    with pytest.raises(LayerNotFoundError, match=r"DigitsCNN has no layer 'layer4'\. Nearest: layer3, layer2, layer1"):
        find_module(DigitsCNN(10, width=4), "layer4")


def test_the_extractor_gives_every_target_from_one_forward_pass() -> None:
    torch.manual_seed(0)
    model = DigitsCNN(10, width=4)
    targets = [
        build_target("logits", {}),
        build_target("embedding", {"layer": "pool"}),
        build_target("fsp", {"layers": ["layer2", "layer3"]}),
    ]
    x = torch.rand(5, 1, 8, 8)
    with TargetExtractor(model, targets, "cpu") as extract:
        logits, values = extract(x)
    assert not model.training  # the teacher is frozen in eval mode
    torch.testing.assert_close(values["logits"], logits, rtol=0, atol=0)
    assert values["embedding/pool"].shape == (5, 16) and values["fsp/layer2__layer3"].shape == (5, 8, 16)
