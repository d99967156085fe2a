"""Multi-stage training: each stage trains with its own losses, freezes what it says, and learned loss parts train."""

from __future__ import annotations

import copy
import random

import numpy as np
import pytest
import torch

from kdcache.losses import LossSetup
from kdcache.models import DigitsCNN, DigitsResNet
from kdcache.precompute import precompute
from kdcache.store import open_store
from kdcache.targets import build_target
from kdcache.train import CachedDataset, StageConfig, fit


@pytest.fixture
def fsp_data(tmp_path, digits_small, views):
    torch.manual_seed(0)
    teacher = DigitsResNet(10, width=4, blocks=(2, 2, 2)).eval()
    targets = [build_target("fsp", {"layers": ["layer1", "layer2"]}), build_target("features", {"layer": "layer2"})]
    precompute(
        teacher,
        digits_small,
        tmp_path / "s.zarr",
        targets=targets,
        views=views,
        num_classes=10,
        shard_samples=128,
        progress=False,
    )
    return CachedDataset(
        digits_small,
        open_store(str(tmp_path / "s.zarr")),
        teacher="teacher",
        targets=["fsp/layer1__layer2", "features/layer2"],
        views=views,
    )


def stage(name: str, losses: list[dict], **extra) -> StageConfig:
    return StageConfig.model_validate({"name": name, "epochs": 1, "optimizer": {"lr": 0.01}, "losses": losses, **extra})


def snapshot(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in model.state_dict().items()}


def changed(before: dict, model: torch.nn.Module, prefix: str, *, buffers: bool = True) -> bool:
    """Whether any parameter (and, with ``buffers``, any running statistic) under ``prefix`` differs from ``before``."""
    current = model.state_dict() if buffers else dict(model.named_parameters())
    return any(not torch.equal(before[k], v) for k, v in current.items() if k.startswith(prefix))


def test_stages_run_in_order_each_with_its_own_losses(fsp_data):
    torch.manual_seed(1)
    student = DigitsResNet(10, width=4, blocks=(1, 1, 1))
    start = snapshot(student)
    result = fit(
        student,
        fsp_data,
        None,
        stages=[stage("fsp", [{"name": "fsp", "pairs": [["layer1", "layer2"]]}])],
        setup=LossSetup(10),
        batch_size=64,
        seed=0,
        progress=False,
    )
    assert [log.stage for log in result.history] == ["fsp"] and set(result.history[0].parts) == {"fsp"}
    assert changed(start, student, "layer1") and changed(start, student, "layer2")
    no_gradient = [p for p in ("fc", "layer3") if changed(start, student, p, buffers=False)]
    assert no_gradient == []  # the FSP loss does not reach the head or the last stage
    after_fsp = snapshot(student)
    fit(
        student,
        fsp_data,
        None,
        stages=[stage("task", [{"name": "ce"}])],
        setup=LossSetup(10),
        batch_size=64,
        seed=0,
        progress=False,
    )
    assert changed(after_fsp, student, "fc") and changed(after_fsp, student, "layer3")


def test_frozen_modules_keep_parameters_and_statistics(fsp_data):
    torch.manual_seed(1)
    student = DigitsResNet(10, width=4, blocks=(1, 1, 1))
    start = snapshot(student)
    fit(
        student,
        fsp_data,
        None,
        stages=[stage("head", [{"name": "ce"}], freeze=["stem", "layer1", "layer2"])],
        setup=LossSetup(10),
        batch_size=64,
        seed=0,
        progress=False,
    )
    for prefix in ("stem", "layer1", "layer2"):  # weights and BatchNorm running statistics alike
        assert not changed(start, student, prefix), prefix
    assert changed(start, student, "layer3") and changed(start, student, "fc")
    assert all(p.requires_grad for p in student.parameters())  # freezing ends with the stage


def test_hint_regressor_is_created_and_trained(fsp_data):
    torch.manual_seed(1)
    student = DigitsResNet(10, width=2, blocks=(1, 1, 1))  # 4 channels at layer2 against the teacher's 8
    stages = [stage("hint", [{"name": "hint", "target": "features/layer2"}], epochs=2)]
    first = fit(
        copy.deepcopy(student),
        fsp_data,
        None,
        stages=stages,
        setup=LossSetup(10),
        batch_size=64,
        seed=0,
        progress=False,
    )
    assert first.history[1].train_loss < first.history[0].train_loss


def test_fit_leaves_the_callers_random_state_as_it_found_it(fsp_data):
    """Every step seeds torch (dropout replays on resume), but the caller's generators come back untouched: its next
    draw after fit is the one it would have made without fit. The run is decided by ``seed``, not by the caller's
    state: two callers in different states train the same student, another seed trains another one."""
    torch.manual_seed(1)
    student = DigitsCNN(10, width=4, dropout=0.5)  # dropout draws from torch's generator every step

    def train(caller_seed: int, seed: int = 0) -> dict[str, torch.Tensor]:
        torch.manual_seed(caller_seed)
        random.seed(caller_seed)
        np.random.seed(caller_seed)
        before = torch.get_rng_state(), random.getstate(), np.random.get_state()
        trained = copy.deepcopy(student)
        fit(
            trained,
            fsp_data,
            None,
            stages=[stage("task", [{"name": "ce"}])],
            setup=LossSetup(10),
            batch_size=64,
            seed=seed,
            progress=False,
        )
        assert torch.equal(torch.get_rng_state(), before[0])
        assert random.getstate() == before[1]
        assert np.array_equal(np.random.get_state()[1], before[2][1])
        return snapshot(trained)

    first, second, other = train(123), train(999), train(123, seed=1)
    assert all(torch.equal(first[k], second[k]) for k in first)
    assert any(not torch.equal(first[k], other[k]) for k in first)
