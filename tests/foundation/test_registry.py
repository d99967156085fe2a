"""Registries refuse duplicates and explain misses; import paths name a user's own code, with errors that say which
part failed; a Factory rebuilds an object from its import path and arguments in any process."""

from __future__ import annotations

import pickle
import sys

import pytest
import torch

from kdcache.errors import RegistryError
from kdcache.registry import Factory, LazyModule, Registry, import_callable, is_import_path


def test_registry_refuses_duplicates_and_suggests_the_nearest_name() -> None:
    things: Registry[int] = Registry("thing")
    things.register("alpha")(1)
    things.register("beta")(2)
    assert things.get("beta") == 2 and things.names() == ["alpha", "beta"] and "alpha" in things
    with pytest.raises(RegistryError, match=r"thing 'alpha' is already registered"):
        things.register("alpha")(3)
    with pytest.raises(
        RegistryError, match=r"unknown thing 'alpah'\. Did you mean 'alpha'\? Valid choices: alpha, beta"
    ):
        things.get("alpah")


def test_import_paths_resolve_with_a_colon_or_a_dot() -> None:
    assert import_callable("torchvision.models:resnet18") is import_callable("torchvision.models.resnet18")
    assert import_callable("kdcache.registry:Factory.build") is Factory.build  # attributes nest
    assert is_import_path("torchvision.models:resnet18") and not is_import_path("digits-cnn")


@pytest.mark.parametrize(
    ("path", "message"),
    [
        (
            "no_such_module_kdcache:make",
            r"module 'no_such_module_kdcache' does not import \(ModuleNotFoundError.*PYTHONPATH",
        ),
        (
            "torchvision.models:resnet180",
            r"'torchvision.models' has no attribute 'resnet180'\. Did you mean 'resnet18'",
        ),
        ("torch:__version__", r"names a TorchVersion, which cannot be called"),
        ("resnet18", r"is not an import path; write it as 'package.module:callable'"),
    ],
    ids=["module", "attribute", "not-callable", "no-module"],
)
def test_bad_import_paths_say_which_part_failed(path: str, message: str) -> None:
    with pytest.raises(RegistryError, match=message):
        import_callable(path, what="model")


def test_a_factory_rebuilds_the_same_object_after_pickling() -> None:
    factory = Factory("torch.nn:Linear", args=(4, 3), kwargs={"bias": False})
    copy = pickle.loads(pickle.dumps(factory))
    assert copy == factory and hash(copy) == hash(factory)
    torch.manual_seed(0)
    a = factory.build()
    torch.manual_seed(0)
    b = copy.build()
    assert isinstance(a, torch.nn.Linear) and a.bias is None and torch.equal(a.weight, b.weight)
    assert factory.describe() == {"factory": "torch.nn:Linear", "args": [4, 3], "kwargs": {"bias": False}}


def test_a_lazy_module_imports_on_first_attribute_and_keeps_it(tmp_path, monkeypatch):
    (tmp_path / "kdcache_lazy_probe.py").write_text("VALUE = 41\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    probe = LazyModule("kdcache_lazy_probe")
    assert "kdcache_lazy_probe" not in sys.modules and repr(probe) == "<lazy module 'kdcache_lazy_probe'>"
    assert probe.VALUE == 41 and "kdcache_lazy_probe" in sys.modules
    assert probe.__dict__["VALUE"] == 41  # kept on the proxy: the next use is a plain attribute
    with pytest.raises(AttributeError):
        probe.__wrapped__  # noqa: B018  (introspection never imports)
    monkeypatch.delitem(sys.modules, "kdcache_lazy_probe")
