"""Any model by import path: torchvision's and timm's constructors and a user's own, called with the pipeline's
args plus num_classes when they take it; the layer names of such a model are its own module paths."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from kdcache.errors import ConfigError, LayerNotFoundError
from kdcache.models import build_model
from kdcache.targets import TargetExtractor, build_target


def linear_without_classes(width: int) -> nn.Module:
    """A user's factory that does not take num_classes (kdcache must not pass it)."""
    return nn.Linear(4, width)


def not_a_model() -> str:
    return "oops"


@pytest.mark.parametrize(
    ("arch", "args", "kind"),
    [
        ("torchvision.models:resnet18", {"weights": None}, "ResNet"),
        ("torchvision.models:mobilenet_v3_small", {}, "MobileNetV3"),
        ("timm:create_model", {"model_name": "resnet10t", "pretrained": False}, "ResNet"),
    ],
)
def test_library_models_by_import_path_get_num_classes(arch, args, kind):
    model = build_model(arch, 7, args).eval()
    assert type(model).__name__ == kind
    with torch.no_grad():
        assert model(torch.zeros(2, 3, 32, 32)).shape == (2, 7)


def test_user_factories_get_only_the_arguments_they_take():
    model = build_model(f"{__name__}:linear_without_classes", 10, {"width": 3})
    assert isinstance(model, nn.Linear) and model.out_features == 3
    with pytest.raises(ConfigError, match=r"rejected its arguments \{'widht': 3\}"):
        build_model(f"{__name__}:linear_without_classes", 10, {"widht": 3})
    with pytest.raises(ConfigError, match=r"returned a str, not a torch.nn.Module"):
        build_model(f"{__name__}:not_a_model", 10)


def test_layers_of_an_imported_model_are_its_module_paths():
    model = build_model("torchvision.models:resnet18", 5, {"weights": None}).eval()
    hint = build_target("features", {"layer": "layer3.1.conv2"})
    _, values = TargetExtractor(model, [hint], "cpu")(torch.zeros(2, 3, 32, 32))
    assert values[hint.name].shape == (2, 256, 2, 2)
    with pytest.raises(LayerNotFoundError, match=r"layer3\.1\.conv2"):
        TargetExtractor(model, [build_target("features", {"layer": "layer3.1.conv3"})], "cpu")
