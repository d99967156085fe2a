"""Learning without Forgetting (Li & Hoiem, TPAMI 2017) with the old model's outputs taken from the cache.

LwF adds a new task to a trained network (shared θs, old head θo) without the old task's data. Its first step records
the old network's outputs y_o on the new task's training images: that is exactly stage one, so they are precomputed
into a store. Then a new head θn (random init) is added; a warm-up trains θn with θs and θo frozen; finally every
parameter trains on L_new(y_n, ŷ_n) + λo·L_old(y_o, ŷ_o), where L_old compares the old head's *current* outputs ŷ_o
with the cached y_o at temperature T = 2 (the paper's Eq. 2, as Hinton KD: see docs/schemes.md). The table compares
it, on the old and the new task's test data, with fine-tuning (no L_old), feature extraction (θs, θo frozen
throughout) and joint training on both tasks' data (the upper bound).
"""

from __future__ import annotations

import copy
import logging
from pathlib import Path
from typing import Any, Literal

import torch
from pydantic import Field, model_validator

from kdcache.checkpoint import load_model, read_spec, save_model
from kdcache.datasets import ClassSubset, SampleDataset
from kdcache.errors import CheckpointError
from kdcache.models import MultiHeadNet, build_model
from kdcache.models.heads import CONCAT
from kdcache.pipeline.build import load_split, view_transform
from kdcache.pipeline.cached import StoredTeacher, cached_data
from kdcache.pipeline.config import RunConfig, TeacherConfig
from kdcache.pipeline.methods import METHODS, Method
from kdcache.pipeline.schemes.base import (
    Phase,
    Trained,
    accuracy,
    cache_teacher,
    report,
    stage_losses,
    train,
)
from kdcache.tables import pct
from kdcache.targets import build_target
from kdcache.train import StageConfig, ViewDataset
from kdcache.train.stages import Section

log = logging.getLogger(__name__)

Row = Literal["lwf", "fine_tuning", "feature_extraction", "joint_training"]
ROWS: list[Row] = ["lwf", "fine_tuning", "feature_extraction", "joint_training"]
ROW_TITLES = {
    "lwf": "LwF (CE + λo·KD to the cached old outputs)",
    "fine_tuning": "fine-tuning (CE only)",
    "feature_extraction": "feature extraction (θs, θo frozen)",
    "joint_training": "joint training on both tasks (upper bound)",
}
OLD, NEW = "old", "new"
FROZEN = ["backbone", f"heads.{OLD}"]  # θs and θo, as module paths of the MultiHeadNet


class LwFSection(Section):
    """The ``lwf:`` section: the two tasks, the old network, the warm-up and joint phases, λo and T."""

    old_classes: list[int] = Field(min_length=2, description="labels of the old task (head heads.old)")
    new_classes: list[int] = Field(min_length=2, description="labels of the new task (head heads.new)")
    old_model: TeacherConfig = Field(
        description="the old network; trained on the old task unless its checkpoint exists"
    )
    classifier: str = Field("fc", description="module path of the old network's classifier: it becomes heads.old")
    batch_size: int = Field(64, gt=0)
    warmup: Phase = Field(description="θn alone, θs and θo frozen (BatchNorm statistics included)")
    joint: Phase = Field(description="every parameter; LwF adds λo·KD on the old head")
    lambda_old: float = Field(1.0, ge=0, description="λo, the weight of the old-task term")
    temperature: float = Field(2.0, gt=0, description="T of the old-task term (the paper uses 2)")
    rows: list[Row] = Field(default=list(ROWS), min_length=1)

    @model_validator(mode="after")
    def _disjoint_tasks(self) -> LwFSection:
        if overlap := sorted(set(self.old_classes) & set(self.new_classes)):
            raise ValueError(f"old_classes and new_classes share {overlap}; the two tasks must not overlap")
        return self


class LwFPipeline(RunConfig):
    """``method: lwf``: data, views and cache as in every pipeline, plus the ``lwf:`` section."""

    method: Literal["lwf"]
    lwf: LwFSection

    @model_validator(mode="after")
    def _consistent(self) -> LwFPipeline:
        if self.data.classes is not None:
            raise ValueError("data.classes must be unset: lwf.old_classes and lwf.new_classes select each task")
        produced = self.cache.produced
        if "logits" not in produced:
            raise ValueError(f"LwF reads the old head's cached logits, but cache.targets produces {produced}")
        return self

    @property
    def store_suffix(self) -> str:
        return "-new-task"  # the old model's outputs on the new task's data

    @property
    def old_checkpoint(self) -> Path:
        return self.lwf.old_model.checkpoint or self.out / "old-model.safetensors"


def run_lwf(cfg: LwFPipeline, *, progress: bool = True) -> dict[str, Any]:
    """The old network, stage one on the new task, then every row of ``lwf.rows``; prints and writes the table."""
    s = cfg.lwf
    task = {name: _task_splits(cfg, classes) for name, classes in ((OLD, s.old_classes), (NEW, s.new_classes))}
    old = ensure_old_model(cfg, task[OLD][0], progress=progress)
    before = {OLD: accuracy(cfg, old, task[OLD][1])}
    stage_one = cache_teacher(
        cfg,
        old,
        task[NEW][0],
        store=cfg.store_url,
        name=s.old_model.name,
        spec=_spec(cfg, [OLD]),
        targets=[build_target(t.kind, t.params) for t in cfg.cache.targets],
        num_classes=len(s.new_classes),
        shard_samples=cfg.cache.shard_samples,
        progress=progress,
    )
    results: dict[str, dict[str, Any]] = {}
    curves = {}
    for row in s.rows:
        net, trained = _train_row(cfg, row, old, task, progress=progress)
        with net.answering(OLD):
            old_acc = accuracy(cfg, net, task[OLD][1])
        with net.answering(NEW):
            new_acc = accuracy(cfg, net, task[NEW][1])
        results[row] = {"old_task": old_acc, "new_task": new_acc, "seconds": trained.result.seconds}
        results[row]["curve"] = [h.metrics.get("accuracy") for h in trained.result.history]
        results[row]["train_loss"] = stage_losses(trained.result)  # the warm-up's shows that it converged
        curves[ROW_TITLES[row]] = trained.result
        save_model(net.cpu(), cfg.out / f"{row}.safetensors", spec=_spec(cfg, [OLD, NEW]))
    header = ["model", f"old task {s.old_classes}", f"new task {s.new_classes}", "training time (s)"]
    rows = [["old network (before the new task)", pct(before[OLD]), "—", "—"]]
    rows += [[ROW_TITLES[r], pct(v["old_task"]), pct(v["new_task"]), f"{v['seconds']:.1f}"] for r, v in results.items()]
    summary = {
        "old_model": {"old_task": before[OLD]},
        "rows": results,
        "store": {"url": cfg.store_url, "teacher": s.old_model.name, "samples": len(task[NEW][0])},
        "stage_one_seconds": stage_one.seconds,
        "lambda_old": s.lambda_old,
        "temperature": s.temperature,
    }
    return report(cfg, header, rows, summary, curves, metric_label="new-task accuracy (joint training: both tasks)")


def _task_splits(cfg: RunConfig, classes: list[int]) -> tuple[SampleDataset, SampleDataset]:
    """(train, test) of one task: the samples of ``classes``, relabelled 0..k-1."""
    train, test = (
        ClassSubset(load_split(cfg, split), classes) for split in (cfg.data.train_split, cfg.data.test_split)
    )
    return train, test


def _spec(cfg: LwFPipeline, heads: list[str]) -> dict[str, Any]:
    model, s = cfg.lwf.old_model.model, cfg.lwf
    classes = {OLD: s.old_classes, NEW: s.new_classes}
    return {"arch": model.arch, "args": model.args, "classifier": s.classifier, "heads": {h: classes[h] for h in heads}}


def ensure_old_model(cfg: LwFPipeline, old_train: SampleDataset, *, progress: bool = True) -> MultiHeadNet:
    """The old network (backbone θs + head θo, answering with θo) from its checkpoint, trained on the old task and
    saved first when the checkpoint does not exist."""
    s = cfg.lwf
    torch.manual_seed(cfg.seed)
    single = build_model(s.old_model.model.arch, len(s.old_classes), s.old_model.model.args)
    old = MultiHeadNet.from_classifier(single, s.classifier, OLD)
    path, spec = cfg.old_checkpoint, _spec(cfg, [OLD])
    if path.exists():
        if (stored := read_spec(path)) and stored != spec:
            raise CheckpointError(
                f"old-model checkpoint {str(path)!r} is a {stored}, but lwf.old_model is {spec}. Point "
                "lwf.old_model.checkpoint at the right file or delete it to retrain"
            )
        load_model(old, path)  # in place
        return old.eval()
    if s.old_model.train is None:
        raise CheckpointError(f"old-model checkpoint {str(path)!r} does not exist and lwf.old_model has no train")
    log.info("training the old network on classes %s because %s does not exist", s.old_classes, path)
    plan = s.old_model.train
    data = ViewDataset(old_train, view_transform(cfg))
    classes = len(s.old_classes)
    train(
        cfg, old, data, None, plan.stages, batch_size=plan.batch_size, num_classes=classes, desc=OLD, progress=progress
    )
    save_model(old.cpu(), path, spec=spec)
    return old.eval()


def lwf_network(cfg: LwFPipeline, old: MultiHeadNet) -> MultiHeadNet:
    """The old network (copied) with a new head θn of random init, answering with θn. The new head's init depends
    only on the seed, so every row starts from the same weights."""
    net = copy.deepcopy(old)
    torch.manual_seed(cfg.seed)
    net.add_linear_head(NEW, len(cfg.lwf.new_classes))
    net.output = NEW
    return net


def row_stages(cfg: LwFPipeline, row: Row) -> list[StageConfig]:
    """Warm-up (θn only) then the joint phase; the rows differ only in the joint phase's loss and freezing."""
    s = cfg.lwf
    ce: list[dict[str, Any]] = [{"name": "ce"}]
    kd: dict[str, Any] = {
        "name": "kd",
        "weight": s.lambda_old,
        "temperature": s.temperature,
        "student_layer": f"heads.{OLD}",
    }
    joint: tuple[list[dict[str, Any]], list[str]] = {
        "lwf": ([*ce, kd], []),
        "fine_tuning": (ce, []),
        "feature_extraction": (ce, FROZEN),
        "joint_training": (ce, []),
    }[row]
    return [s.warmup.stage("warmup", ce, FROZEN), s.joint.stage("joint", *joint)]


def _train_row(
    cfg: LwFPipeline,
    row: Row,
    old: MultiHeadNet,
    task: dict[str, tuple[SampleDataset, SampleDataset]],
    *,
    progress: bool,
) -> tuple[MultiHeadNet, Trained]:
    """Train one row from the old network; LwF reads the old head's outputs from the store, never from a model."""
    s = cfg.lwf
    net = lwf_network(cfg, old)
    classes = len(s.new_classes)
    train_set, test_set = task[NEW]
    if row == "lwf":
        teacher = StoredTeacher(s.old_model.name)
        data: ViewDataset = cached_data(cfg, train_set, ["logits"], teacher, num_classes=classes)
    elif row == "joint_training":  # one classifier over both heads (old labels first), trained on both tasks' data
        net.output, classes = CONCAT, len(s.old_classes) + len(s.new_classes)
        train_set, test_set = _task_splits(cfg, s.old_classes + s.new_classes)
        data = ViewDataset(train_set, view_transform(cfg))
    else:
        data = ViewDataset(train_set, view_transform(cfg))
    trained = train(
        cfg,
        net,
        data,
        test_set,
        row_stages(cfg, row),
        batch_size=s.batch_size,
        num_classes=classes,
        desc=row,
        progress=progress,
    )
    net.output = NEW
    return net, trained


METHODS.register("lwf")(Method(config=LwFPipeline, run=run_lwf))
