"""Born-again networks (Furlanello et al., ICML 2018): self-distillation over generations of one architecture.

Generation 0 trains on the labels. Each generation k is then cached into one store as teacher ``gen<k>`` (several
teachers per store, one set of samples and views), and generation k+1 (same architecture, same seed) trains from that
cache alone: its predecessor is never built again. The table reports every generation against generation 0, and the
ensemble of all generations (the paper's BANE, averaging their softmax outputs).
"""

from __future__ import annotations

from typing import Any, Literal

import torch
from pydantic import Field, model_validator
from torch import nn

from kdcache.checkpoint import save_model
from kdcache.datasets import SampleDataset
from kdcache.models import build_model
from kdcache.pipeline.build import device_of, eval_views, load_split, view_transform
from kdcache.pipeline.cached import StoredTeacher, cached_data
from kdcache.pipeline.config import ModelConfig, RunConfig, TrainConfig
from kdcache.pipeline.methods import METHODS, Method
from kdcache.pipeline.schemes.base import Trained, accuracy, cache_teacher, report, train
from kdcache.tables import pct
from kdcache.targets import build_target
from kdcache.train import StageConfig, ViewDataset
from kdcache.train.stages import Section


class SelfKDSection(Section):
    """The ``selfkd:`` section: the architecture, how many born-again generations, generation 0's training and the
    stages of every later generation (their KD losses read the predecessor's cached targets)."""

    model: ModelConfig
    generations: int = Field(3, ge=1, description="born-again generations after generation 0")
    teacher_prefix: str = Field("gen", description="generation k is teacher <prefix><k> in the store")
    train: TrainConfig = Field(description="generation 0: batch size and stages (labels only)")
    distill: list[StageConfig] = Field(min_length=1, description="stages of generations 1..n, reading gen k-1")


class SelfKDPipeline(RunConfig):
    """``method: selfkd``: data, views and cache as in every pipeline, plus the ``selfkd:`` section."""

    method: Literal["selfkd"]
    selfkd: SelfKDSection

    @model_validator(mode="after")
    def _generations_read_what_is_cached(self) -> SelfKDPipeline:
        produced = set(self.cache.produced)
        needed = {t for stage in self.selfkd.distill for loss in stage.losses for t in loss.teacher_targets()}
        if not needed:
            raise ValueError(
                "selfkd.distill reads no teacher target: add a kd loss so each generation learns from its predecessor"
            )
        if missing := sorted(needed - produced):
            raise ValueError(f"selfkd.distill reads {missing}, but cache.targets produces {sorted(produced)}")
        for stage in self.selfkd.train.stages:
            if read := sorted({t for loss in stage.losses for t in loss.teacher_targets()}):
                raise ValueError(f"selfkd.train (generation 0) has no teacher, but stage {stage.name!r} reads {read}")
        return self

    def teacher_name(self, generation: int) -> str:
        return f"{self.selfkd.teacher_prefix}{generation}"


def run_selfkd(cfg: SelfKDPipeline, *, progress: bool = True) -> dict[str, Any]:
    """Generation 0, then each born-again generation from its predecessor's cache; prints and writes the table."""
    train_set, test_set = (load_split(cfg, split) for split in (cfg.data.train_split, cfg.data.test_split))
    results: dict[str, dict[str, Any]] = {}
    curves, models = {}, []
    for generation in range(cfg.selfkd.generations + 1):
        trained = train_generation(cfg, generation, train_set, test_set, progress=progress)
        name = cfg.teacher_name(generation)
        stage_one = cache_generation(cfg, generation, trained.model, train_set, progress=progress)
        results[name] = {
            "test": accuracy(cfg, trained.model, test_set),
            "seconds": trained.result.seconds,
            "stage_one_seconds": stage_one,
            "curve": [h.metrics.get("accuracy") for h in trained.result.history],
        }
        curves[f"generation {generation}"] = trained.result
        models.append(trained.model)
    ensemble = ensemble_accuracy(cfg, models, test_set)
    base = results[cfg.teacher_name(0)]["test"]
    header = ["model", "test accuracy", "vs generation 0 (points)", "training time (s)"]
    rows = [
        [
            f"generation {k}" + (" (labels only)" if k == 0 else f" (from the cache of {cfg.teacher_name(k - 1)})"),
            pct(v["test"]),
            f"{100 * (v['test'] - base):+.2f}",
            f"{v['seconds']:.1f}",
        ]
        for k, v in enumerate(results.values())
    ]
    rows.append(
        [f"ensemble of generations 0..{cfg.selfkd.generations}", pct(ensemble), f"{100 * (ensemble - base):+.2f}", "—"]
    )
    summary = {"generations": results, "ensemble": ensemble, "store": cfg.store_url}
    return report(cfg, header, rows, summary, curves, metric_label="test accuracy")


def train_generation(
    cfg: SelfKDPipeline, generation: int, train_set: SampleDataset, test_set: SampleDataset | None, *, progress: bool
) -> Trained:
    """Train generation ``generation`` from the seed: on the labels (0), or from the cache of generation k-1 (the
    store must hold it complete; no model of generation k-1 is loaded). Saves ``<prefix><k>.safetensors``."""
    s = cfg.selfkd
    torch.manual_seed(cfg.seed)  # every generation starts from the same weights: only the teacher signal differs
    model = build_model(s.model.arch, cfg.data.num_classes, s.model.args)
    if generation == 0:
        stages, data = s.train.stages, ViewDataset(train_set, view_transform(cfg))
    else:
        needed = sorted({t for stage in s.distill for loss in stage.losses for t in loss.teacher_targets()})
        stages = s.distill
        data = cached_data(cfg, train_set, needed, StoredTeacher(cfg.teacher_name(generation - 1)))
    name = cfg.teacher_name(generation)
    trained = train(
        cfg,
        model,
        data,
        test_set,
        list(stages),
        batch_size=s.train.batch_size,
        num_classes=cfg.data.num_classes,
        desc=name,
        progress=progress,
    )
    save_model(model.cpu(), cfg.out / f"{name}.safetensors", spec=_spec(cfg, generation))
    return trained


def cache_generation(
    cfg: SelfKDPipeline, generation: int, model: nn.Module, train_set: SampleDataset, *, progress: bool
) -> float:
    """Stage one for generation ``generation``: its targets into the shared store as teacher ``<prefix><k>``;
    returns the seconds it took."""
    done = cache_teacher(
        cfg,
        model,
        train_set,
        store=cfg.store_url,
        name=cfg.teacher_name(generation),
        spec=_spec(cfg, generation),
        targets=[build_target(t.kind, t.params) for t in cfg.cache.targets],
        num_classes=cfg.data.num_classes,
        shard_samples=cfg.cache.shard_samples,
        progress=progress,
    )
    return done.seconds


@torch.no_grad()
def ensemble_accuracy(cfg: SelfKDPipeline, models: list[nn.Module], test_set: SampleDataset) -> float:
    """Accuracy of the mean softmax of ``models`` (BANE) on ``test_set``."""
    data, device = ViewDataset(test_set, eval_views(cfg)), device_of(cfg)
    models = [m.to(device).eval() for m in models]
    correct = 0
    for start in range(0, len(data), 256):
        batch = data[list(range(start, min(start + 256, len(data))))].to(device)
        probs = torch.stack([m(batch.inputs).softmax(dim=1) for m in models]).mean(dim=0)
        correct += int((probs.argmax(dim=1) == batch.labels).sum())
    return correct / len(data)


def _spec(cfg: SelfKDPipeline, generation: int) -> dict[str, Any]:
    return {"arch": cfg.selfkd.model.arch, "args": cfg.selfkd.model.args, "generation": generation}


METHODS.register("selfkd")(Method(config=SelfKDPipeline, run=run_selfkd))
