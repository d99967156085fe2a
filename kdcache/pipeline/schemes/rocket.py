"""Rocket Launching (Zhou et al., AAAI 2018): a booster and a light net trained together, then the booster cached.

Both nets are heads of one :class:`MultiHeadNet` over shared lower layers and train on
CE(light) + CE(booster) + λ‖l(x) − z(x)‖²₂ (``rocket_hint``). With the gradient block the hint never updates the
booster's own parameters. An online teacher changes every step, so nothing can be precomputed while it trains; once
training ends the booster is a fixed network, and its logits are cached so that it keeps teaching students offline
(the last row). Ablations: without the gradient block, and without parameter sharing (each net with its own lower
layers). References: the light net alone and the booster alone, trained on CE.
"""

from __future__ import annotations

from typing import Any, Literal

import torch
from pydantic import Field, model_validator

from kdcache.checkpoint import save_model
from kdcache.datasets import SampleDataset
from kdcache.errors import ConfigError
from kdcache.models import MultiHeadNet, build_model
from kdcache.pipeline.build import load_split, view_transform
from kdcache.pipeline.cached import StoredTeacher, cached_data
from kdcache.pipeline.config import ModelConfig, RunConfig
from kdcache.pipeline.methods import METHODS, Method
from kdcache.pipeline.schemes.base import Phase, Trained, accuracy, cache_teacher, report, train
from kdcache.tables import pct
from kdcache.targets import build_target
from kdcache.train import LossConfig, StageConfig, ViewDataset
from kdcache.train.stages import Section

Row = Literal["light", "booster", "rocket", "rocket_no_block", "rocket_no_sharing", "offline_kd"]
ROWS: list[Row] = ["light", "booster", "rocket", "rocket_no_block", "rocket_no_sharing", "offline_kd"]
ROW_TITLES = {
    "light": "light net alone (CE)",
    "booster": "booster alone (CE)",
    "rocket": "rocket launching (shared, gradient block)",
    "rocket_no_block": "rocket, without gradient block",
    "rocket_no_sharing": "rocket, without parameter sharing",
    "offline_kd": "light net, offline KD from the cached booster",
}


class RocketSection(Section):
    """The ``rocket:`` section: the two-headed network, the shared training phase, λ and the offline KD losses."""

    model: ModelConfig = Field(description="a MultiHeadNet with both heads and a share argument, e.g. digits-rocket")
    light: str = Field("light", description="head name of the light net")
    booster: str = Field("booster", description="head name of the booster")
    batch_size: int = Field(64, gt=0)
    train: Phase = Field(description="epochs and optimiser of every row")
    hint_weight: float = Field(gt=0, description="λ of the hint ‖l(x) − z(x)‖²₂")
    teacher_name: str = Field("booster", description="the booster's name in the store")
    offline_losses: list[LossConfig] = Field(
        default=[LossConfig(name="ce", weight=0.1), LossConfig.model_validate({"name": "kd", "weight": 0.9})],
        min_length=1,
        description="losses of the offline row, reading the cached booster logits",
    )
    rows: list[Row] = Field(default=list(ROWS), min_length=1)


class RocketPipeline(RunConfig):
    """``method: rocket``: data, views and cache as in every pipeline, plus the ``rocket:`` section."""

    method: Literal["rocket"]
    rocket: RocketSection

    @model_validator(mode="after")
    def _offline_reads_the_cache(self) -> RocketPipeline:
        produced = set(self.cache.produced)
        for loss in self.rocket.offline_losses:
            if missing := sorted(set(loss.teacher_targets()) - produced):
                raise ValueError(f"rocket.offline_losses: {loss.name!r} reads {missing}; add it to cache.targets")
        if "offline_kd" in self.rocket.rows and "rocket" not in self.rocket.rows:
            raise ValueError("the offline_kd row learns from the booster of the rocket row; list rocket in rows too")
        return self


def rocket_network(cfg: RocketPipeline, *, share: bool = True) -> MultiHeadNet:
    """The two-headed network from the seed (every row starts from the same initial weights of the parts it has)."""
    s = cfg.rocket
    torch.manual_seed(cfg.seed)
    net = build_model(s.model.arch, cfg.data.num_classes, {**s.model.args, "share": share})
    if not isinstance(net, MultiHeadNet) or {s.light, s.booster} - set(net.heads):
        raise ConfigError(
            f"rocket.model {s.model.arch!r} must build a MultiHeadNet with heads {s.light!r} and {s.booster!r}"
        )
    return net


def row_stages(cfg: RocketPipeline, row: Row) -> list[StageConfig]:
    """One stage per row: CE for the nets alone, the rocket objective for the co-trained rows, the configured KD
    losses for the offline row."""
    s = cfg.rocket
    booster_ce = {"name": "ce", "student_layer": f"heads.{s.booster}"}
    hint = {"name": "rocket_hint", "weight": s.hint_weight, "booster_layer": f"heads.{s.booster}"}
    losses: dict[Row, list[dict[str, Any]]] = {
        "light": [{"name": "ce"}],
        "booster": [{"name": "ce"}],
        "rocket": [{"name": "ce"}, booster_ce, hint],
        "rocket_no_block": [{"name": "ce"}, booster_ce, {**hint, "gradient_block": False}],
        "rocket_no_sharing": [{"name": "ce"}, booster_ce, hint],
        "offline_kd": [{"name": loss.name, "weight": loss.weight, **loss.params} for loss in s.offline_losses],
    }
    return [s.train.stage(row, losses[row])]


def run_rocket(cfg: RocketPipeline, *, progress: bool = True) -> dict[str, Any]:
    """Every row of ``rocket.rows`` from the same seed; the rocket row's booster is cached before the offline row."""
    s = cfg.rocket
    train_set, test_set = (load_split(cfg, split) for split in (cfg.data.train_split, cfg.data.test_split))
    results: dict[str, dict[str, Any]] = {}
    curves, stage_one = {}, {}
    for row in s.rows:
        net = _row_network(cfg, row)
        data = ViewDataset(train_set, view_transform(cfg))
        if row == "offline_kd":  # stage two from the store: the booster is not built
            needed = sorted({t for loss in s.offline_losses for t in loss.teacher_targets()})
            classes = cfg.data.num_classes
            data = cached_data(cfg, train_set, needed, StoredTeacher(s.teacher_name), num_classes=classes)
        trained = train(
            cfg,
            net,
            data,
            test_set,
            row_stages(cfg, row),
            batch_size=s.batch_size,
            num_classes=cfg.data.num_classes,
            desc=row,
            progress=progress,
        )
        results[row] = _measure(cfg, net, trained, test_set)
        curves[ROW_TITLES[row]] = trained.result
        save_model(net.cpu(), cfg.out / f"{row}.safetensors", spec=_spec(cfg, row))
        if row == "rocket":
            stage_one = _cache_booster(cfg, net, train_set, progress=progress)
    header = ["model", "light net", "booster", "light params", "booster params", "training time (s)"]
    rows = [
        [
            ROW_TITLES[r],
            pct(v.get("light")),
            pct(v.get("booster")),
            _count(v, "light"),
            _count(v, "booster"),
            f"{v['seconds']:.1f}",
        ]
        for r, v in results.items()
    ]
    summary = {"rows": results, "hint_weight": s.hint_weight, "store": {"url": cfg.store_url, **stage_one}}
    return report(cfg, header, rows, summary, curves, metric_label="light-net accuracy (booster row: booster)")


def _row_network(cfg: RocketPipeline, row: Row) -> MultiHeadNet:
    s = cfg.rocket
    net = rocket_network(cfg, share=row != "rocket_no_sharing")
    if row in ("light", "offline_kd"):
        return net.keep([s.light])
    if row == "booster":
        return net.keep([s.booster])
    return net


def _measure(cfg: RocketPipeline, net: MultiHeadNet, trained: Trained, test: SampleDataset) -> dict[str, Any]:
    """Test accuracy and parameter count of each net the row trained (``net``, the model of ``trained``; the light
    net is backbone + light head)."""
    out: dict[str, Any] = {"seconds": trained.result.seconds}
    out["curve"] = [h.metrics.get("accuracy") for h in trained.result.history]
    for role, head in (("light", cfg.rocket.light), ("booster", cfg.rocket.booster)):
        if head in net.heads:
            with net.answering(head):
                out[role] = accuracy(cfg, net, test)
            single = net.keep([head])
            out[f"{role}_params"] = sum(p.numel() for p in single.parameters())
    return out


def _cache_booster(
    cfg: RocketPipeline, net: MultiHeadNet, train_set: SampleDataset, *, progress: bool
) -> dict[str, Any]:
    """Stage one on the co-trained booster, now a fixed network: its logits on the training set into the store."""
    s = cfg.rocket
    booster = net.keep([s.booster])
    done = cache_teacher(
        cfg,
        booster,
        train_set,
        store=cfg.store_url,
        name=s.teacher_name,
        spec={**_spec(cfg, "rocket"), "head": s.booster},
        targets=[build_target(t.kind, t.params) for t in cfg.cache.targets],
        num_classes=cfg.data.num_classes,
        shard_samples=cfg.cache.shard_samples,
        progress=progress,
    )
    return {"teacher": s.teacher_name, "seconds": done.seconds, "cached_accuracy": done.accuracy}


def _spec(cfg: RocketPipeline, row: Row) -> dict[str, Any]:
    s = cfg.rocket
    return {"arch": s.model.arch, "args": {**s.model.args, "share": row != "rocket_no_sharing"}, "row": row}


def _count(values: dict[str, Any], role: str) -> str:
    count = values.get(f"{role}_params")
    return "—" if count is None else f"{count:,}"


METHODS.register("rocket")(Method(config=RocketPipeline, run=run_rocket))
