"""The pipeline's teacher: loaded from its checkpoint or its ``transformers`` directory as it is, or trained and
saved first when there is neither.

Training the teacher is the pipeline's job, not stage one's: the stage-one engine only ever receives a trained
teacher (an object, or a factory that loads one).
"""

from __future__ import annotations

import logging

import torch
from torch import nn

from kdcache.checkpoint import save_model
from kdcache.errors import CheckpointError, ConfigError
from kdcache.metrics import task_metric
from kdcache.pipeline.build import (
    device_of,
    eval_views,
    load_split,
    load_teacher,
    loss_setup,
    model_spec,
    teacher_directory,
    untrained_teacher,
    view_transform,
)
from kdcache.pipeline.config import DistillConfig
from kdcache.train import ViewDataset, evaluate, fit

log = logging.getLogger(__name__)


def ensure_teacher(cfg: DistillConfig, *, progress: bool = True) -> nn.Module:
    """The teacher from its checkpoint or its directory (:func:`~kdcache.pipeline.build.teacher_directory`),
    training and saving it first when the checkpoint does not exist."""
    path = cfg.teacher_checkpoint
    if teacher_directory(cfg) is not None or path.exists():
        return load_teacher(cfg)
    if cfg.teacher.train is None:
        raise CheckpointError(
            f"teacher checkpoint {str(path)!r} does not exist and the pipeline has no teacher.train: point "
            "teacher.checkpoint at a kdcache checkpoint, add teacher.train to train one, or use a transformers "
            "directory as it is (teacher.model: {arch: causal-lm, args: {path: DIR}}, no teacher.checkpoint)"
        )
    log.info("training the teacher because %s does not exist", path)
    teacher = train_teacher(cfg, progress=progress)
    save_model(teacher.cpu(), path, spec=model_spec(cfg, "teacher"))
    return teacher.eval()


def train_teacher(cfg: DistillConfig, *, progress: bool = True) -> nn.Module:
    """A fresh teacher trained by ``teacher.train`` on the training split (seeded by ``cfg.seed``), not saved: the
    pipeline saves it as a kdcache checkpoint, ``data/make_chat_teacher.py`` as a ``transformers`` directory."""
    if cfg.teacher.train is None:
        raise ConfigError(f"teacher {cfg.teacher.name!r} has no teacher.train: add one to train it")
    torch.manual_seed(cfg.seed)
    teacher = untrained_teacher(cfg)
    log.info("training the teacher (%s)", cfg.teacher.model.arch)
    train = cfg.teacher.train
    fit(
        teacher,
        ViewDataset(load_split(cfg, cfg.data.train_split), view_transform(cfg), policy="fresh"),
        None,
        stages=train.stages,
        setup=loss_setup(cfg),
        batch_size=train.batch_size,
        seed=cfg.seed,
        device=device_of(cfg),
        progress=progress,
        desc="teacher",
    )
    return teacher


def teacher_test_metrics(cfg: DistillConfig, teacher: nn.Module) -> dict[str, float]:
    """The teacher's test metrics on the eval view (accuracy; mIoU and pixel accuracy for segmentation)."""
    test = ViewDataset(load_split(cfg, cfg.data.test_split), eval_views(cfg))
    metric = task_metric(cfg.data.task, cfg.data.num_classes, cfg.data.ignore_index)
    return evaluate(teacher, test, batch_size=256, device=device_of(cfg), metric=metric)
