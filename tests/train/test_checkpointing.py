"""Training checkpoints hold the whole training state without pickle, and a resumed run ends where an uninterrupted
one does, to the bit, in one process."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from safetensors import safe_open
from torch import nn

from kdcache.datasets import Subset
from kdcache.errors import CheckpointError
from kdcache.losses import LOSSES, LossSetup, LossTerm, StepOutputs
from kdcache.models import DigitsCNN
from kdcache.train import OptimizerConfig, StageConfig, ViewDataset, fit
from kdcache.train.checkpointing import Checkpointing
from kdcache.train.stages import build_optimizer, build_schedule, retune
from kdcache.train.statefile import load_state, save_state
from tests.helpers import SnapshotAt


@LOSSES.register("test-learned-temperature")
class LearnedTemperature(LossTerm):
    """Cross-entropy of logits over a learned temperature: a loss term with a parameter of its own (like a FitNets
    regressor), so resume must restore it."""

    def __init__(self, params, setup) -> None:
        super().__init__(params, setup)
        self.log_t = nn.Parameter(torch.zeros(()))

    def forward(self, out: StepOutputs) -> torch.Tensor:
        return F.cross_entropy(out.logits / self.log_t.exp(), out.labels)


def optimiser_states() -> dict:
    model = nn.Linear(3, 2)
    adam = torch.optim.Adam(model.parameters(), lr=0.1)
    sgd = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, nesterov=True)
    schedule = torch.optim.lr_scheduler.LambdaLR(adam, lambda s: 0.5**s)
    for _ in range(3):
        model(torch.ones(4, 3)).square().sum().backward()
        adam.step()
        sgd.step()
        schedule.step()
    return {"adam": adam.state_dict(), "sgd": sgd.state_dict(), "scheduler": schedule.state_dict(), "epoch": 2}


def test_state_round_trips_exactly_without_pickle(tmp_path):
    state = optimiser_states()
    path = save_state(tmp_path / "s.safetensors", state)
    back = load_state(path)
    assert back["adam"]["param_groups"][0]["betas"] == (0.9, 0.999)  # tuples stay tuples
    assert sorted(back["adam"]["state"]) == [0, 1]  # integer keys stay integers (torch maps state by them)
    for name in ("adam", "sgd"):
        for index, values in state[name]["state"].items():
            for key, tensor in values.items():
                assert torch.equal(back[name]["state"][index][key], tensor), (name, index, key)
    assert back["scheduler"] == state["scheduler"] and back["epoch"] == 2
    with safe_open(str(path), framework="pt") as f:  # tensors in the body, the rest as JSON in the header
        assert "adam/state/0/exp_avg" in f.keys() and '"epoch": 2' in f.metadata()["kdcache.train_state"]  # noqa: SIM118  (safe_open is no mapping)
    optimizer = torch.optim.Adam(nn.Linear(3, 2).parameters(), lr=0.1)
    optimizer.load_state_dict(back["adam"])
    assert torch.equal(optimizer.state_dict()["state"][1]["exp_avg_sq"], state["adam"]["state"][1]["exp_avg_sq"])


def test_state_refuses_what_json_and_safetensors_cannot_hold(tmp_path):
    with pytest.raises(CheckpointError, match=r"at 'hook' holds a function, .*no pickle"):
        save_state(tmp_path / "s.safetensors", {"hook": test_state_refuses_what_json_and_safetensors_cannot_hold})
    assert not (tmp_path / "s.safetensors").exists()


STAGES = [
    StageConfig(
        name="warm",
        epochs=2,
        losses=[{"name": "ce", "weight": 0.5}, {"name": "test-learned-temperature", "weight": 0.5}],
        optimizer={"lr": 0.01},
    ),
    StageConfig(
        name="head", epochs=1, losses=[{"name": "ce"}], optimizer={"name": "sgd", "lr": 0.05}, freeze=["layer1"]
    ),
]


def train(data: ViewDataset, test: ViewDataset, checkpoint: Checkpointing, **kw) -> tuple[nn.Module, list]:
    torch.manual_seed(0)
    student = DigitsCNN(10, width=2, dropout=0.5)  # BatchNorm and dropout: both must replay exactly
    result = fit(
        student,
        data,
        test,
        stages=kw.pop("stages", STAGES),
        setup=LossSetup(10),
        batch_size=kw.pop("batch_size", 64),
        seed=0,
        checkpoint=checkpoint,
        progress=False,
        **kw,
    )
    return student, result.history


@pytest.fixture
def digits_views(digits_small, views) -> tuple[ViewDataset, ViewDataset]:
    return ViewDataset(digits_small, views), ViewDataset(Subset(digits_small, np.arange(200, 300), tag="t"), views)


# 300 samples / 64 = 5 steps per epoch, a checkpoint every 2 steps: step 8 begins with the one taken after step 6
# (epoch 1, 2 steps done: stage "warm"); step 13 with the one after step 12 (epoch 2, 2 steps done: stage "head")
@pytest.mark.parametrize(("at", "position"), [(8, (1, 2)), (13, (2, 2))], ids=["warm-stage", "head-stage"])
def test_resume_from_a_mid_epoch_checkpoint_ends_bit_identical(tmp_path, digits_views, at, position):
    data, test = digits_views
    path, copy = tmp_path / "run.safetensors", tmp_path / "crashed.safetensors"
    reference, history = train(data, test, Checkpointing(path, every_steps=2), targets=SnapshotAt(path, copy, at))
    saved = load_state(copy)
    assert (saved["sampler"]["epoch"], saved["sampler"]["step"]) == position

    resumed, resumed_history = train(data, test, Checkpointing(copy, every_steps=2, resume=True))
    for name, tensor in reference.state_dict().items():
        assert torch.equal(resumed.state_dict()[name], tensor), name
    assert [h.metrics for h in resumed_history] == [h.metrics for h in history]
    for ours, theirs in zip(resumed_history, history, strict=True):  # the interrupted epoch's loss includes both runs
        assert ours.train_loss == pytest.approx(theirs.train_loss, rel=1e-12)
    assert load_state(copy)["sampler"]["epoch"] == 3  # the resumed run saved its own end


@pytest.mark.parametrize(
    ("change", "text"),
    [
        ({"stages": STAGES}, r"in stages\[0\]\.epochs: checkpoint 1, now 2\. .*new Checkpointing path"),
        ({"batch_size": 32}, r"fit\(batch_size=\): checkpoint 64, now 32"),
    ],
    ids=["stages", "batch-size"],
)
def test_resume_refuses_a_different_run(tmp_path, digits_views, change, text):
    data, _test = digits_views
    path = tmp_path / "run.safetensors"
    train(data, None, Checkpointing(path), stages=[STAGES[0].model_copy(update={"epochs": 1}), STAGES[1]])
    changed = {"stages": [STAGES[0].model_copy(update={"epochs": 1}), STAGES[1]], **change}
    with pytest.raises(CheckpointError, match=text):
        train(data, None, Checkpointing(path, resume=True), **changed)


def test_resume_refuses_another_student(tmp_path, digits_views):
    data, _ = digits_views
    path = tmp_path / "run.safetensors"
    train(data, None, Checkpointing(path), stages=STAGES[1:])
    with pytest.raises(CheckpointError, match=r"the student module's layers and shapes: checkpoint [0-9a-f]{12}, now"):
        fit(
            DigitsCNN(10, width=4),
            data,
            None,
            stages=STAGES[1:],
            setup=LossSetup(10),
            batch_size=64,
            seed=0,
            checkpoint=Checkpointing(path, resume=True),
            progress=False,
        )


def test_retune_gives_a_restored_schedule_the_new_base_rate_at_its_position():
    """An allowed lr change on resume: the step after the restore runs at new lr x the schedule's factor there, as if
    the run had had that rate from the start; the unchanged rate is left exactly as restored."""
    cfg = OptimizerConfig(lr=0.01, weight_decay=0.0)
    model = nn.Linear(3, 2)
    optimizer = build_optimizer(list(model.parameters()), cfg)
    schedule = build_schedule(optimizer, cfg, steps=10)
    for _ in range(4):
        optimizer.step()
        schedule.step()
    saved = {"optimizer": optimizer.state_dict(), "scheduler": schedule.state_dict()}
    for new, expected in ((cfg, optimizer.param_groups[0]["lr"]), (cfg.model_copy(update={"lr": 0.05}), None)):
        again = build_optimizer(list(model.parameters()), new)
        resumed = build_schedule(again, new, steps=10)
        again.load_state_dict(saved["optimizer"])
        resumed.load_state_dict(saved["scheduler"])
        retune(again, resumed, new.model_copy(update={"weight_decay": 1e-3}))
        factor = 0.5 * (1 + math.cos(math.pi * 4 / 10))
        assert again.param_groups[0]["lr"] == (expected if expected is not None else pytest.approx(0.05 * factor))
        assert again.param_groups[0]["weight_decay"] == 1e-3
        again.step()
        resumed.step()
        assert again.param_groups[0]["lr"] == pytest.approx(new.lr * 0.5 * (1 + math.cos(math.pi * 5 / 10)))
