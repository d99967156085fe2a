"""Rocket Launching: the hint by hand, the gradient block on the booster's own parameters, the pipeline end to end."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from kdcache.capture import LayerCapture, forward_with_capture
from kdcache.checkpoint import load_model
from kdcache.losses import LossSetup, StepOutputs, build_objective, logit_hint
from kdcache.pipeline import load_pipeline
from kdcache.pipeline.build import load_split
from kdcache.pipeline.cached import StoredTeacher, cached_data
from kdcache.pipeline.schemes.rocket import RocketPipeline, rocket_network, row_stages
from kdcache.store import open_store
from tests.conftest import ROOT
from tests.helpers import kdcache, with_sets

PIPELINE = ROOT / "pipelines" / "digits_rocket.yaml"
SMALL = [
    "data.max_train_samples=300",
    "data.max_test_samples=200",
    "rocket.train.epochs=10",
    "rocket.model.args.booster_width=8",
    "cache.shard_samples=128",
]


def small_rocket(tmp_path, *extra: str) -> RocketPipeline:
    return load_pipeline(PIPELINE, [*SMALL, f"output_dir={tmp_path / 'run'}", *extra])


def test_hint_is_the_squared_l2_distance_of_the_logits_averaged_over_samples():
    light = torch.tensor([[1.0, 2.0], [0.0, 0.0]])
    booster = torch.tensor([[0.0, 0.0], [1.0, -1.0]])
    assert float(logit_hint(light, booster, gradient_block=True)) == pytest.approx((1 + 4 + 1 + 1) / 2)


def objective_and_outputs(cfg: RocketPipeline, row: str, *, share: bool = True):
    """The network of a co-trained row, its objective as the runner builds it, and one batch's outputs."""
    net = rocket_network(cfg, share=share).train()
    stage = row_stages(cfg, row)[0]
    objective = build_objective([(loss.name, loss.weight, loss.params) for loss in stage.losses], LossSetup(10))
    torch.manual_seed(1)
    inputs, labels = torch.randn(16, 1, 8, 8), torch.randint(0, 10, (16,))
    with LayerCapture(net, objective.student_layers()) as capture:
        outputs = forward_with_capture(net, inputs, capture)
    return net, objective, StepOutputs(outputs.logits, labels, outputs.features)


def gradients(net: torch.nn.Module, loss: torch.Tensor) -> dict[str, torch.Tensor | None]:
    net.zero_grad(set_to_none=True)
    loss.backward(retain_graph=True)
    return {name: None if p.grad is None else p.grad.clone() for name, p in net.named_parameters()}


def nonzero(grads: dict[str, torch.Tensor | None], prefix: str) -> bool:
    return any(g is not None and bool(g.abs().sum() > 0) for name, g in grads.items() if name.startswith(prefix))


@pytest.mark.parametrize("share", [True, False], ids=["shared", "no-sharing"])
def test_gradient_block_keeps_the_hint_away_from_the_booster(tmp_path, share):
    cfg = small_rocket(tmp_path)
    net, objective, out = objective_and_outputs(cfg, "rocket" if share else "rocket_no_sharing", share=share)
    hint = gradients(net, objective.terms["rocket_hint"](out))
    booster = {name: g for name, g in hint.items() if name.startswith("heads.booster.")}
    assert booster and all(g is None for g in booster.values())  # not even a zero tensor: no path at all
    assert nonzero(hint, "heads.light.") and nonzero(hint, "backbone.") is share

    # the whole objective gives the booster exactly the gradient of its own cross-entropy
    total, _ = objective(out)
    full = gradients(net, total)
    own = gradients(net, objective.terms["ce#1"](out))  # CE(booster): the second ce term
    assert all(torch.equal(full[name], own[name]) for name in booster)


def test_without_gradient_block_the_hint_updates_the_booster(tmp_path):
    cfg = small_rocket(tmp_path)
    net, objective, out = objective_and_outputs(cfg, "rocket_no_block")
    assert objective.terms["rocket_hint"].params.gradient_block is False
    hint = gradients(net, objective.terms["rocket_hint"](out))
    assert nonzero(hint, "heads.booster.") and nonzero(hint, "heads.light.")


def test_rows_start_from_the_same_weights(tmp_path):
    cfg = small_rocket(tmp_path)
    full, light = rocket_network(cfg), rocket_network(cfg).keep(["light"])
    shared = {k: v for k, v in full.state_dict().items() if not k.startswith("heads.booster.")}
    assert shared.keys() == light.state_dict().keys()
    assert all(torch.equal(v, light.state_dict()[k]) for k, v in shared.items())


@pytest.mark.slow
def test_rocket_pipeline_end_to_end(tmp_path):
    out = tmp_path / "run"
    result = kdcache("run", str(PIPELINE), "--quiet", *with_sets([*SMALL, f"output_dir={out}"]))
    assert result.returncode == 0, result.stderr
    summary = json.loads((out / "results.json").read_text())
    rows = summary["rows"]
    assert set(rows) == {"light", "booster", "rocket", "rocket_no_block", "rocket_no_sharing", "offline_kd"}
    assert all(r["light"] > 0.4 for name, r in rows.items() if name != "booster")
    assert all(r["booster"] > 0.7 for name, r in rows.items() if "booster" in r)
    assert rows["light"]["light_params"] == rows["rocket"]["light_params"] < rows["rocket"]["booster_params"]
    for row in ("light net alone", "booster alone", "without gradient block", "offline KD from the cached booster"):
        assert row in result.stdout

    # the booster cached after co-training is the rocket row's booster, and the offline row trained from its store
    cfg = small_rocket(tmp_path)
    booster = load_model(rocket_network(cfg), out / "rocket.safetensors").keep(["booster"]).eval()
    assert open_store(cfg.store_url).teachers == ["booster"]
    data = cached_data(cfg, load_split(cfg, "train"), ["logits"], StoredTeacher("booster"))
    batch = data[np.arange(len(data))].to("cpu")
    with torch.no_grad():
        assert torch.equal(batch.targets["logits"], booster(batch.inputs).half().float())
