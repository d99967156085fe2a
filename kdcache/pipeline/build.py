"""From a validated pipeline config to the objects the engines take: datasets, views, models, targets, devices.

The two factories at the end (:func:`pipeline_teacher`, :func:`pipeline_train_split`) take the pipeline as plain
JSON, so a dask task can name them as ``kdcache.pipeline.build:pipeline_teacher`` and a worker started anywhere
rebuilds the teacher and the training split from the pipeline alone.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from kdcache.checkpoint import load_model, read_spec
from kdcache.datasets import ClassSubset, SampleDataset, Subset, build_dataset
from kdcache.errors import CheckpointError
from kdcache.losses import LossSetup
from kdcache.models import build_model
from kdcache.pipeline.config import DistillConfig, RunConfig
from kdcache.pipeline.tokens import check_language_model
from kdcache.registry import Factory, moved_names
from kdcache.targets import Target, build_target
from kdcache.views import Mix, TokenViews, Views, ViewTransform, build_transform, build_view_op


def device_of(cfg: RunConfig) -> torch.device:
    if cfg.device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(cfg.device)


def load_split(cfg: RunConfig, split: str) -> SampleDataset:
    """The train or test split named in the config, restricted to ``data.classes`` (relabelled 0..k-1) and cut to
    ``max_*_samples`` when those are set."""
    dataset = build_dataset(cfg.data.dataset, split, cfg.data.split_args(split))
    if cfg.data.task == "language-model":
        check_language_model(cfg, dataset)
    if cfg.data.classes is not None:
        dataset = ClassSubset(dataset, cfg.data.classes)
    limit = cfg.data.max_train_samples if split == cfg.data.train_split else cfg.data.max_test_samples
    if limit is not None and limit < len(dataset):
        return Subset(dataset, np.arange(limit), tag=f"first-{limit}")
    return dataset


def view_transform(cfg: RunConfig) -> Views:
    """The pipeline's views: ``views.count`` views per sample made by ``views.augment`` ops or ``views.pipeline``
    (``views.eval`` for view 0), optionally mixed (``views.mix``), then ``data`` normalisation; for a language model
    (``data.task: language-model``) the token ids unchanged."""
    if cfg.data.task == "language-model":
        return TokenViews()
    views = cfg.views
    return ViewTransform(
        count=views.count,
        seed=views.seed,
        mean=cfg.data.mean,
        std=cfg.data.std,
        augment=[build_view_op(op.op, op.params) for op in views.augment],
        pipeline=build_transform(views.pipeline, views.pipeline_args),
        eval=build_transform(views.eval, views.eval_args),
        mix=None if views.mix is None else Mix(views.mix.kind, views.mix.alpha, views.mix.p),
    )


def eval_views(cfg: RunConfig) -> Views:
    """The eval view (view 0, no augmentation): what test-time evaluation always sees."""
    return view_transform(cfg).eval_view()


def loss_setup(cfg: RunConfig) -> LossSetup:
    return LossSetup(num_classes=cfg.data.num_classes, ignore_index=cfg.data.ignore_index, task=cfg.data.task)


def targets_to_write(cfg: RunConfig) -> list[Target]:
    return [build_target(t.kind, t.params) for t in cfg.cache.targets]


def model_spec(cfg: DistillConfig, role: str) -> dict[str, Any]:
    """The architecture description of the teacher or student, as checkpoints and fingerprints record it."""
    model = cfg.teacher.model if role == "teacher" else cfg.student.model
    return {"arch": model.arch, "args": model.args, "num_classes": cfg.data.num_classes}


def build_student(cfg: DistillConfig) -> nn.Module:
    torch.manual_seed(cfg.seed)  # every variant starts from the same initial weights
    return build_model(cfg.student.model.arch, cfg.data.num_classes, cfg.student.model.args)


def untrained_teacher(cfg: DistillConfig) -> nn.Module:
    return build_model(cfg.teacher.model.arch, cfg.data.num_classes, cfg.teacher.model.args)


def teacher_directory(cfg: DistillConfig) -> Path | None:
    """The local ``transformers`` directory the teacher is used from as it is: a ``causal-lm`` teacher with
    ``args.path`` and neither ``teacher.checkpoint`` nor ``teacher.train`` (whose weights would come from elsewhere).
    Its files are the teacher: the store fingerprints them, and stage two refuses the store once they change."""
    model, teacher = cfg.teacher.model, cfg.teacher
    if model.arch != "causal-lm" or model.args.get("path") is None or teacher.checkpoint or teacher.train:
        return None
    return Path(model.args["path"])


def load_teacher(cfg: DistillConfig) -> nn.Module:
    """The teacher from its checkpoint, or from its ``transformers`` directory as it is (:func:`teacher_directory`);
    never trained here: dask workers load, they do not train."""
    if teacher_directory(cfg) is not None:
        _require_directory(cfg)
        return untrained_teacher(cfg).eval()  # built from the directory: its weights are the teacher's
    path = cfg.teacher_checkpoint
    spec = model_spec(cfg, "teacher")
    _refuse_directory_weights(path)
    if not path.exists():
        raise CheckpointError(
            f"teacher checkpoint {str(path)!r} does not exist; run `kdcache precompute` without --workers/--scheduler "
            "once to train it, or point teacher.checkpoint at it"
        )
    stored = read_spec(path)
    if stored and stored != spec:
        raise CheckpointError(
            f"teacher checkpoint {str(path)!r} is a {stored}, but the pipeline's teacher is {spec}. "
            "Point teacher.checkpoint at the right file or delete it to retrain"
        )
    return load_model(untrained_teacher(cfg), path).eval()


def _require_directory(cfg: DistillConfig) -> None:
    """A teacher directory that is not on disk, refused with the command that writes it (``teacher.make``)."""
    directory = teacher_directory(cfg)
    if directory is None or directory.is_dir():
        return
    fix = f"run `{cfg.teacher.make}` to write it" if cfg.teacher.make else "save the model there with save_pretrained"
    raise CheckpointError(
        f"teacher {cfg.teacher.name!r} is the transformers directory {str(directory)!r}, which does not exist: {fix}, "
        "or point teacher.model.args.path at the directory"
    )


def _refuse_directory_weights(path: Path) -> None:
    """A ``transformers`` directory's own weights are not a kdcache checkpoint (other key names, maybe sharded)."""
    directory = path if path.is_dir() else path.parent
    weights = path.is_dir() or path.name.startswith(("model.", "model-", "pytorch_model"))
    if weights and (directory / "config.json").is_file():
        raise CheckpointError(
            f"teacher.checkpoint {str(path)!r} is in a transformers model directory ({str(directory)!r}), whose weights "
            "are not a kdcache checkpoint. Use the directory as it is: remove teacher.checkpoint (and teacher.train) "
            f"and set teacher.model to {{arch: causal-lm, args: {{path: {directory}}}}}"
        )


def output_path(cfg: RunConfig, name: str) -> Path:
    cfg.out.mkdir(parents=True, exist_ok=True)
    return cfg.out / name


# ------------------------------------------------------------------------------------------------ for dask workers
def pipeline_teacher(pipeline: dict[str, Any]) -> nn.Module:
    """The trained teacher of a pipeline given as JSON (a :class:`Factory` target for dask workers)."""
    return load_teacher(_parse(pipeline))


def pipeline_train_split(pipeline: dict[str, Any]) -> SampleDataset:
    """The training split of a pipeline given as JSON (a :class:`Factory` target for dask workers)."""
    cfg = _parse(pipeline)
    return load_split(cfg, cfg.data.train_split)


def pipeline_factories(cfg: DistillConfig) -> tuple[Factory, Factory]:
    """Factories of the pipeline's teacher and training split that any process with kdcache can build."""
    pipeline = cfg.model_dump(mode="json")
    return (
        Factory("kdcache.pipeline.build:pipeline_teacher", kwargs={"pipeline": pipeline}),
        Factory("kdcache.pipeline.build:pipeline_train_split", kwargs={"pipeline": pipeline}),
    )


def _parse(pipeline: dict[str, Any]) -> DistillConfig:
    return DistillConfig.model_validate(pipeline)


__getattr__ = moved_names(__name__, {"cache_targets": "kdcache.pipeline.build:targets_to_write"})
