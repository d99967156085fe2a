"""The teacher/student pairs and data the bench measures, built the same way in the bench and its subprocesses.

* ``resnet``: a torchvision ResNet-50 teacher and ResNet-18 student (``weights=None``: step time does not depend on
  the weights) on generated 32x32 RGB images with ``resnet_classes`` classes, ``resnet_steps`` batches of
  ``resnet_batch``.
* ``digits``: the models, batch size, losses and data of ``pipelines/digits_kd.yaml`` (teacher untrained: only
  its cost matters here). The pipeline is held here as :data:`DIGITS_KD` (a test keeps the two equal), so the
  bench runs from any directory after ``pip install``.

Timing does not depend on what the pixels are, so generated data stands in for CIFAR-sized images.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
import torchvision
from torch import nn

from kdcache.datasets import SampleDataset, TensorDataset
from kdcache.losses import LossSetup
from kdcache.models import build_model
from kdcache.pipeline.build import build_student, load_split, loss_setup, targets_to_write, view_transform
from kdcache.pipeline.loading import distill_pipeline, parse_pipeline, with_overrides
from kdcache.targets import Target, build_target
from kdcache.tools.bench.settings import BenchSettings
from kdcache.train import LossConfig, OptimizerConfig, StageConfig, TargetSource, ViewDataset, batch_targets, fit
from kdcache.views import Views, ViewTransform

DIGITS_KD: dict[str, Any] = {  # pipelines/digits_kd.yaml, without its comments
    "name": "digits_kd",
    "seed": 0,
    "device": "cpu",
    "data": {"dataset": "digits", "num_classes": 10, "mean": [0.3056], "std": [0.3761]},
    "teacher": {
        "name": "cnn64",
        "model": {"arch": "digits-cnn", "args": {"width": 64}},
        "train": {
            "batch_size": 64,
            "stages": [
                {
                    "epochs": 30,
                    "optimizer": {"name": "adam", "lr": 0.003, "weight_decay": 0.0001},
                    "losses": [{"name": "ce"}],
                }
            ],
        },
    },
    "student": {
        "model": {"arch": "digits-cnn", "args": {"width": 4}},
        "train": {
            "batch_size": 64,
            "stages": [
                {
                    "epochs": 40,
                    "optimizer": {"name": "adam", "lr": 0.01},
                    "losses": [{"name": "ce", "weight": 0.1}, {"name": "kd", "weight": 0.9, "temperature": 4}],
                }
            ],
        },
    },
    "cache": {"targets": [{"kind": "logits", "dtype": "float16"}]},
}
TEACHER = "teacher"  # the teacher name in every bench store


@dataclass
class Workload:
    """A student to train, a teacher to cache (or run live), their data, and the stages of each variant."""

    name: str
    label: str
    train: SampleDataset
    views: Views
    setup: LossSetup
    batch_size: int
    make_teacher: Callable[[], nn.Module]
    make_student: Callable[[], nn.Module]
    targets: list[Target]
    student_only: list[StageConfig]
    distill: list[StageConfig]
    seed: int = 0

    @property
    def target_names(self) -> list[str]:
        return [t.name for t in self.targets]

    def fit_one_epoch(
        self,
        student: nn.Module,
        data: ViewDataset,
        stages: list[StageConfig],
        device: torch.device | str,
        targets: TargetSource = batch_targets,
    ) -> None:
        """Train ``student`` for ``stages`` (one epoch each in the bench) on ``data``, as stage two would."""
        fit(
            student,
            data,
            None,
            stages=stages,
            setup=self.setup,
            batch_size=self.batch_size,
            seed=self.seed,
            device=device,
            targets=targets,
            progress=False,
        )


def generated_images(num_samples: int, num_classes: int, *, channels: int = 3, size: int = 32, seed: int = 0):
    """Uniform random ``channels x size x size`` images with random labels (a stand-in for CIFAR-sized data)."""
    g = torch.Generator().manual_seed(seed)
    return TensorDataset(
        torch.rand(num_samples, channels, size, size, generator=g),
        torch.randint(0, num_classes, (num_samples,), generator=g),
        split="train",
        source={"kind": "generated", "shape": [channels, size, size], "classes": num_classes, "seed": seed},
    )


def resnet_workload(settings: BenchSettings) -> Workload:
    classes = settings.resnet_classes
    optimizer = OptimizerConfig(name="sgd", lr=0.05)
    kd = [LossConfig(name="ce", weight=0.1), LossConfig.model_validate({"name": "kd", "weight": 0.9, "temperature": 4})]

    def seeded(factory: Callable[..., nn.Module]) -> Callable[[], nn.Module]:
        def make() -> nn.Module:
            torch.manual_seed(settings.seed)
            return factory(weights=None, num_classes=classes)

        return make

    return Workload(
        name="resnet",
        label=f"ResNet-50 → ResNet-18, 32×32 generated, {classes} classes",
        train=generated_images(settings.resnet_batch * settings.resnet_steps, classes, seed=settings.seed),
        views=ViewTransform(count=1, seed=0, mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25)),
        setup=LossSetup(num_classes=classes),
        batch_size=settings.resnet_batch,
        make_teacher=seeded(torchvision.models.resnet50),
        make_student=seeded(torchvision.models.resnet18),
        targets=[build_target("logits", {"dtype": "float16"})],
        student_only=[StageConfig(epochs=1, optimizer=optimizer, losses=[LossConfig(name="ce")])],
        distill=[StageConfig(epochs=1, optimizer=optimizer, losses=kd)],
        seed=settings.seed,
    )


def digits_workload(settings: BenchSettings) -> Workload:
    overrides = [] if settings.digits_samples is None else [f"data.max_train_samples={settings.digits_samples}"]
    source = "the bench's digits_kd"
    cfg = with_overrides(distill_pipeline(parse_pipeline(DIGITS_KD, source=source), source), overrides)

    def one_epoch(variant: str) -> list[StageConfig]:
        stages = cfg.variant_stages(cfg.variant(variant))
        return [stages[0].model_copy(update={"epochs": 1})]

    return Workload(
        name="digits",
        label=f"digits_kd pipeline: {_model_text(cfg.teacher.model)} → {_model_text(cfg.student.model)}, UCI digits",
        train=load_split(cfg, cfg.data.train_split),
        views=view_transform(cfg),
        setup=loss_setup(cfg),
        batch_size=cfg.student.train.batch_size,
        make_teacher=lambda: build_model(cfg.teacher.model.arch, cfg.data.num_classes, cfg.teacher.model.args),
        make_student=lambda: build_student(cfg),
        targets=targets_to_write(cfg),
        student_only=one_epoch("scratch"),
        distill=one_epoch("cached"),
        seed=cfg.seed,
    )


WORKLOADS: dict[str, Callable[[BenchSettings], Workload]] = {"resnet": resnet_workload, "digits": digits_workload}


def build_workload(name: str, settings: BenchSettings) -> Workload:
    return WORKLOADS[name](settings)


def logits_source(num_samples: int, num_classes: int, *, seed: int = 0) -> tuple[TensorDataset, nn.Module]:
    """Generated 1x8x8 inputs and a linear teacher with ``num_classes`` outputs: stage one for read-rate stores.

    The read path does not depend on how the logits were made, so the cheapest teacher that writes a real store
    through :func:`kdcache.precompute` is used.
    """
    torch.manual_seed(seed)
    data = generated_images(num_samples, num_classes, channels=1, size=8, seed=seed)
    return data, nn.Sequential(nn.Flatten(), nn.Linear(64, num_classes))


def _model_text(model) -> str:
    args = ", ".join(f"{k} {v}" for k, v in model.args.items())
    return f"{model.arch} ({args})" if args else model.arch


__all__ = ["TEACHER", "WORKLOADS", "Workload", "build_workload", "generated_images", "logits_source"]
