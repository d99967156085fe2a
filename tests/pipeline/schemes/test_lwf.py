"""Learning without Forgetting: its loss by hand, the warm-up's freezing, stage one = LwF's first step, end to end."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from kdcache.checkpoint import load_model
from kdcache.datasets import ClassSubset
from kdcache.errors import ConfigError
from kdcache.losses import LossSetup, StepOutputs, build_objective
from kdcache.models import DigitsCNN, MultiHeadNet
from kdcache.pipeline import load_pipeline
from kdcache.pipeline.build import load_split, view_transform
from kdcache.pipeline.cached import StoredTeacher, cached_data
from kdcache.pipeline.schemes.base import train
from kdcache.pipeline.schemes.lwf import FROZEN, LwFPipeline, lwf_network, row_stages
from kdcache.precompute import precompute
from kdcache.store import open_store
from kdcache.targets import build_target
from tests.conftest import ROOT
from tests.helpers import kdcache, with_sets

PIPELINE = ROOT / "pipelines" / "digits_lwf.yaml"
SMALL = [  # a CI-sized run whose joint phase moves the shared layers enough to forget without LwF
    "data.max_train_samples=400",
    "data.max_test_samples=200",
    "lwf.old_model.train.stages.0.epochs=8",
    "lwf.warmup.epochs=4",
    "lwf.joint.epochs=6",
    "lwf.joint.optimizer.lr=0.03",
    "cache.shard_samples=128",
]


def small_lwf(tmp_path, *extra: str) -> LwFPipeline:
    return load_pipeline(PIPELINE, [*SMALL, f"output_dir={tmp_path / 'run'}", *extra])


def softmax(xs: list[float]) -> list[float]:
    exps = [math.exp(x) for x in xs]
    return [e / sum(exps) for e in exps]


def test_lwf_objective_is_new_task_ce_plus_lambda_kd_on_the_old_head(tmp_path):
    cfg = small_lwf(tmp_path, "lwf.lambda_old=0.5")
    warmup, joint = row_stages(cfg, "lwf")
    objective = build_objective([(loss.name, loss.weight, loss.params) for loss in joint.losses], LossSetup(5))
    assert objective.student_layers() == ["heads.old"] and objective.teacher_targets() == ["logits"]
    new_logits, label = [0.5, 2.0, -1.0, 0.0, 1.0], 1
    old_now, old_cached = [1.0, 0.0, 2.0, -1.0, 0.5], [2.0, 0.5, 1.0, -0.5, 0.0]
    total, parts = objective(
        StepOutputs(
            logits=torch.tensor([new_logits]),
            labels=torch.tensor([label]),
            features={"heads.old": torch.tensor([old_now])},
            teacher={"logits": torch.tensor([old_cached])},
        )
    )
    ce = -math.log(softmax(new_logits)[label])
    p, q = softmax([z / 2 for z in old_cached]), softmax([z / 2 for z in old_now])  # T = 2
    kd = 4 * sum(pi * math.log(pi / qi) for pi, qi in zip(p, q, strict=True))
    assert parts["ce"] == pytest.approx(ce, rel=1e-6) and parts["kd"] == pytest.approx(0.5 * kd, rel=1e-6)
    assert float(total) == pytest.approx(ce + 0.5 * kd, rel=1e-6)
    assert [loss.name for loss in warmup.losses] == ["ce"] and warmup.freeze == ["backbone", "heads.old"]


@pytest.fixture
def lwf_setup(tmp_path, digits_train):
    """An old network on digits 0-4 (untrained: freezing does not depend on training), its logits on the first 200
    new-task digits cached as LwF's first step, and the LwF network with a new head."""
    cfg = small_lwf(tmp_path)
    torch.manual_seed(0)
    old = MultiHeadNet.from_classifier(DigitsCNN(5, width=2), "fc", "old")
    new_task = ClassSubset(digits_train, [5, 6, 7, 8, 9])
    new_task.indices = new_task.indices[:200]
    store = cfg.store_url  # where the pipeline reads its cached targets
    targets = [build_target("logits", {"dtype": "float16"})]
    precompute(
        old,
        new_task,
        store,
        targets=targets,
        views=view_transform(cfg),
        num_classes=5,
        shard_samples=128,
        progress=False,
    )
    data = cached_data(cfg, new_task, ["logits"], StoredTeacher("teacher"), num_classes=5)
    return cfg, old, new_task, data


def test_stage_one_holds_the_old_heads_outputs_on_new_task_data(lwf_setup):
    _, old, new_task, data = lwf_setup
    batch = data[np.arange(len(new_task))].to("cpu")
    with torch.no_grad():
        live = old.eval()(batch.inputs)
    assert batch.targets["logits"].shape == (200, 5)
    assert torch.equal(batch.targets["logits"], live.half().float())  # exactly the fp16 of the old head's outputs


def snapshot(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in model.state_dict().items()}


def unchanged(before: dict, model: torch.nn.Module, prefix: str) -> bool:
    """Every parameter and buffer (BatchNorm running statistics, batch counters) under ``prefix`` is bit-identical."""
    items = [(k, v) for k, v in model.state_dict().items() if k.startswith(prefix + ".")]
    return bool(items) and all(torch.equal(before[k], v) for k, v in items)


def test_a_schemes_cached_data_reads_with_the_pipelines_cache_settings_and_view_policy(tmp_path, lwf_setup):
    """The schemes read their stores through the one ``cached_data`` of the distill method: ``cache.shard_cache``,
    ``cache.ram_budget_mb`` and ``views.policy`` reach a scheme's stage two (they used to be dropped there)."""
    _, _, new_task, _ = lwf_setup
    sets = [
        "views.policy=random",
        f"cache.shard_cache={tmp_path / 'sc'}",
        "cache.shard_cache_mb=1",
        "cache.ram_budget_mb=0",
    ]
    cfg = small_lwf(tmp_path, *sets)
    data = cached_data(cfg, new_task, ["logits"], StoredTeacher("teacher"), num_classes=5)
    reader = next(iter(data.readers["logits"].values()))
    assert data.policy == "random" and reader.shard_cache is not None and reader.shard_cache.max_bytes == 1024**2
    assert len(data[np.arange(200)].stored["logits"]["logits"]) == 200


def test_warmup_trains_only_the_new_head_then_joint_phase_trains_everything(lwf_setup):
    cfg, old, _new_task, data = lwf_setup
    net = lwf_network(cfg, old)
    warmup, joint = row_stages(cfg, "lwf")
    start = snapshot(net)
    train(cfg, net, data, None, [warmup], batch_size=64, num_classes=5, desc="warmup", progress=False)
    assert FROZEN == ["backbone", "heads.old"]
    assert unchanged(start, net, "backbone") and unchanged(start, net, "heads.old")
    assert any("running_mean" in k for k in start if k.startswith("backbone."))  # the statistics were compared too
    assert not unchanged(start, net, "heads.new")
    after_warmup = snapshot(net)
    train(cfg, net, data, None, [joint], batch_size=64, num_classes=5, desc="joint", progress=False)
    for prefix in ("backbone", "heads.old", "heads.new"):  # θo moves only through the KD term
        assert not unchanged(after_warmup, net, prefix), prefix


def test_fine_tuning_never_touches_the_old_head_and_feature_extraction_keeps_the_backbone(lwf_setup):
    cfg, old, _new_task, data = lwf_setup
    for row, moved in (("fine_tuning", "backbone"), ("feature_extraction", None)):
        net = lwf_network(cfg, old)
        start = snapshot(net)
        train(cfg, net, data, None, row_stages(cfg, row), batch_size=64, num_classes=5, desc=row, progress=False)
        assert unchanged(start, net, "heads.old"), row
        assert unchanged(start, net, "backbone") is (moved is None), row


def test_lwf_pipeline_validation(tmp_path):
    with pytest.raises(ConfigError, match=r"old_classes and new_classes share \[4\]"):
        small_lwf(tmp_path, "lwf.new_classes=[4, 5, 6]")
    with pytest.raises(ConfigError, match=r"lwf\.warmpu: unknown key; valid keys here: old_classes, new_classes"):
        small_lwf(tmp_path, "lwf.warmpu.epochs=3")
    with pytest.raises(ConfigError, match=r"data.classes must be unset"):
        small_lwf(tmp_path, "data.classes=[0, 1]", "data.num_classes=2")
    with pytest.raises(ConfigError, match=r"unknown method 'lfw'; valid methods: distill, lwf, rocket, selfkd"):
        small_lwf(tmp_path, "method=lfw")


def test_tools_that_read_one_teacher_refuse_a_scheme_pipeline_by_name(tmp_path):
    """``verify --recompute`` and ``fidelity --store`` read a distill pipeline's teacher and student; given a scheme
    pipeline (which has neither) they refuse it with a typed error naming its method, not an AttributeError."""
    store = str(tmp_path / "none.zarr")
    for args in (["verify", store, "--recompute", "2"], ["fidelity", "--store", store]):
        refused = kdcache(*args, "--pipeline", str(PIPELINE), "--quiet")
        assert refused.returncode == 2, refused.stderr
        assert "takes a method distill pipeline, and 'digits_lwf' is a method 'lwf' one" in refused.stderr
        assert "Traceback" not in refused.stderr


@pytest.mark.slow
def test_lwf_pipeline_end_to_end_keeps_the_old_task(tmp_path):
    out = tmp_path / "run"
    result = kdcache("run", str(PIPELINE), "--quiet", *with_sets([*SMALL, f"output_dir={out}"]))
    assert result.returncode == 0, result.stderr
    for row in ("old network (before the new task)", "LwF (CE", "fine-tuning", "feature extraction", "joint training"):
        assert row in result.stdout
    summary = json.loads((out / "results.json").read_text())
    rows = summary["rows"]
    assert rows["lwf"]["old_task"] > rows["fine_tuning"]["old_task"] + 0.10  # 68.8% against 47.7% here
    assert rows["feature_extraction"]["old_task"] == summary["old_model"]["old_task"]  # θs, θo frozen: no change
    assert min(r["new_task"] for r in rows.values()) > 0.75 and rows["joint_training"]["old_task"] > 0.9

    cache = open_store(str(out / "cache" / "train-new-task.zarr"))  # stage one = LwF's first step
    assert cache.teachers == ["old-cnn16"] and cache.manifest.dataset["source"]["classes"] == [5, 6, 7, 8, 9]
    cfg = small_lwf(tmp_path)
    old = load_model(MultiHeadNet.from_classifier(DigitsCNN(5, width=16), "fc", "old"), out / "old-model.safetensors")
    new_task = ClassSubset(load_split(cfg, "train"), [5, 6, 7, 8, 9])  # what the run cached: first 400, digits 5-9
    data = cached_data(cfg, new_task, ["logits"], StoredTeacher("old-cnn16"), num_classes=5)
    batch = data[np.arange(len(data))].to("cpu")
    with torch.no_grad():
        assert torch.equal(batch.targets["logits"], old.eval()(batch.inputs).half().float())

    refused = kdcache("train", str(PIPELINE), "--quiet", *with_sets([f"output_dir={out}"]))
    assert refused.returncode == 2 and "only `kdcache run` runs" in refused.stderr
