"""View steps are identified by what they are: every argument, a function's code, an object's state; never by a
``repr`` that hides them or holds a memory address."""

from __future__ import annotations

import functools
import json
import subprocess
import sys

import pytest
import torch
from torchvision.transforms import v2

from kdcache.errors import ConfigError
from kdcache.views import ViewTransform
from kdcache.views.identity import describe_step
from tests.conftest import ROOT
from tests.faults.viewsteps import Darken, Gamma


def countdown(n: int) -> int:
    return 0 if n <= 0 else countdown(n - 1)


THRESHOLD = 0.5


def thresholded(image: torch.Tensor) -> torch.Tensor:
    return (image > THRESHOLD).float()


class Opaque:
    """An object of a user's class with no readable state."""

    __slots__ = ()

    def __call__(self, image: torch.Tensor) -> torch.Tensor:
        return image


class SelfDescribing(Opaque):
    __slots__ = ()

    def kdcache_identity(self) -> dict[str, float]:
        return {"strength": 0.25}


DIFFERENT = {
    "lambda body": (v2.Lambda(lambda x: x.flip(-1)), v2.Lambda(lambda x: 1 - x)),
    "lambda constant": (v2.Lambda(lambda x: x * 2), v2.Lambda(lambda x: x * 3)),
    "RandomApply p (not in its repr)": (
        v2.RandomApply([v2.RandomHorizontalFlip()], p=0.3),
        v2.RandomApply([v2.RandomHorizontalFlip()], p=0.9),
    ),
    "own class argument (repr Gamma())": (Gamma(0.5), Gamma(2.0)),
    "RandAugment magnitude": (v2.RandAugment(magnitude=9), v2.RandAugment(magnitude=5)),
    "partial keyword": (functools.partial(torch.clamp, min=0.0), functools.partial(torch.clamp, min=0.1)),
    "closure value": ((lambda f: lambda x: x * f)(0.5), (lambda f: lambda x: x * f)(0.7)),
}


@pytest.mark.parametrize("case", list(DIFFERENT))
def test_steps_that_compute_differently_are_described_differently(case):
    a, b = DIFFERENT[case]
    if case.startswith("RandomApply"):
        assert repr(a) == repr(b)  # what format 2 recorded: the same for both
    assert describe_step(a) != describe_step(b)


def test_a_module_global_a_function_reads_is_part_of_its_identity(monkeypatch):
    before = describe_step(thresholded)
    monkeypatch.setattr(sys.modules[__name__], "THRESHOLD", 0.7)
    assert describe_step(thresholded) != before and describe_step(thresholded)["globals"] == {"THRESHOLD": 0.7}


def test_an_object_without_repr_is_the_same_step_in_another_process():
    here = json.dumps(describe_step(v2.Compose([Darken(0.5), v2.RandomHorizontalFlip(0.3)])), sort_keys=True)
    code = (
        "import json; from torchvision.transforms import v2; from kdcache.views.identity import describe_step; "
        "from tests.faults.viewsteps import Darken; "
        "print(json.dumps(describe_step(v2.Compose([Darken(0.5), v2.RandomHorizontalFlip(0.3)])), sort_keys=True))"
    )
    there = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True).stdout
    assert "object at 0x" in repr(Darken(0.5)) and there.strip() == here


def test_recursive_functions_are_described_and_unreadable_objects_refused_with_the_fix():
    assert describe_step(countdown)["globals"]["countdown"]["recursive"] is True
    with pytest.raises(ConfigError, match=r"Opaque\) cannot be identified.*kdcache_identity\(\)"):
        ViewTransform(count=2, seed=0, pipeline=v2.Compose([Opaque()]))  # refused when the views are made
    assert describe_step(SelfDescribing())["identity"] == {"strength": 0.25}


SETTINGS = {"threshold": 0.5, "levels": [1, 2]}


def configured(image: torch.Tensor) -> torch.Tensor:
    return (image > SETTINGS["threshold"]).float()


def test_a_settings_dict_a_function_reads_is_part_of_its_identity(monkeypatch):
    before = describe_step(configured)
    monkeypatch.setitem(SETTINGS, "threshold", 0.7)
    assert describe_step(configured) != before
