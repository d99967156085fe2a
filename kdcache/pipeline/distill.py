"""The ``distill`` method's steps: stage one for the pipeline's teacher, and one student variant trained from the
store (``cached``), a live teacher (``online``) or the labels alone (``scratch``).

Each function does one step the CLI exposes; :mod:`kdcache.pipeline.compare` chains them into ``kdcache run``.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from kdcache.checkpoint import save_model
from kdcache.datasets import SampleDataset
from kdcache.errors import ConfigError, speaking
from kdcache.pipeline.build import (
    build_student,
    device_of,
    eval_views,
    load_split,
    loss_setup,
    model_spec,
    pipeline_factories,
    targets_to_write,
    teacher_directory,
    view_transform,
)
from kdcache.pipeline.cached import StoredTeacher, cached_data
from kdcache.pipeline.config import DistillConfig, VariantConfig
from kdcache.pipeline.loading import with_overrides
from kdcache.pipeline.teacher import ensure_teacher
from kdcache.precompute import PrecomputeReport, StageOneJob, check_cluster, run_local, run_on_dask
from kdcache.registry import Factory
from kdcache.targets import Ensemble
from kdcache.train import (
    Checkpointing,
    LiveTeacher,
    StageConfig,
    TrainResult,
    ViewDataset,
    World,
    fit,
    process_group,
    teacher_targets,
)


@dataclass
class StudentRun:
    """One student training run: which variant, its history and its final test metrics."""

    variant: str
    result: TrainResult

    @property
    def metrics(self) -> dict[str, float]:
        return self.result.final


# ------------------------------------------------------------------------------------------------ stage one
def stage_one_job(cfg: DistillConfig, *, teacher: nn.Module | Factory, dataset: SampleDataset | Factory) -> StageOneJob:
    """The pipeline's stage one: ``teacher`` and ``dataset`` are objects (this process) or factories (dask)."""
    return StageOneJob(
        teacher=teacher,
        dataset=dataset,
        targets=tuple(targets_to_write(cfg)),
        views=view_transform(cfg),
        num_classes=cfg.data.num_classes,
        teacher_name=cfg.teacher.name,
        teacher_spec=model_spec(cfg, "teacher"),
        batch_size=cfg.cache.batch_size,
        device=str(device_of(cfg)),
        ignore_index=cfg.data.ignore_index,
        allow_tokenizer_mismatch=cfg.cache.allow_tokenizer_mismatch,
        store_tokens=cfg.cache.store_tokens,
    )


@speaking("pipeline")
def run_precompute(
    cfg: DistillConfig,
    *,
    progress: bool = True,
    workers: int | None = None,
    scheduler: str | None = None,
    break_lock: bool = False,
) -> PrecomputeReport:
    """Stage one for the pipeline's teacher (trained first when its checkpoint does not exist): in this process, or
    on dask with ``workers`` local worker processes or the cluster at ``scheduler``, whose workers rebuild the
    teacher and the data from the pipeline (:func:`~kdcache.pipeline.build.pipeline_factories`; this process then
    builds neither, so the model and dataset code need only be importable on the workers). ``break_lock``
    takes over the store's writer lock from a writer that died."""
    if workers is None and scheduler is None:
        teacher = ensure_teacher(cfg, progress=progress)
        job = stage_one_job(cfg, teacher=teacher, dataset=load_split(cfg, cfg.data.train_split))
        return run_local(
            job, cfg.store_url, shard_samples=cfg.cache.shard_samples, progress=progress, break_lock=break_lock
        )
    check_cluster(workers, scheduler)  # before the teacher is trained: a typo costs nothing
    if teacher_directory(cfg) is None and not cfg.teacher_checkpoint.exists():  # trained here once; then only the
        ensure_teacher(cfg, progress=progress)  # workers build it (from its checkpoint or its directory)
    teacher_factory, dataset_factory = pipeline_factories(cfg)
    job = stage_one_job(cfg, teacher=teacher_factory, dataset=dataset_factory)
    return run_on_dask(
        job,
        cfg.store_url,
        workers=workers,
        scheduler=scheduler,
        shard_samples=cfg.cache.shard_samples,
        progress=progress,
        break_lock=break_lock,
    )


# ------------------------------------------------------------------------------------------------ stage two
def stored_teacher(cfg: DistillConfig) -> StoredTeacher:
    """The pipeline's teacher as stage two requires it of the store: ``teacher.name`` (or the ensemble of
    ``teacher.ensemble``) with its architecture, its checkpoint's weights when still on disk (hashed; the model is
    never built), and every file of its transformers directory when the teacher is one, used as it is."""
    if cfg.teacher.ensemble is not None:
        return StoredTeacher(stage_two_teacher(cfg))
    return StoredTeacher(cfg.teacher.name, model_spec(cfg, "teacher"), cfg.teacher_checkpoint, teacher_directory(cfg))


@speaking("pipeline")
def train_student(
    cfg: DistillConfig,
    variant: str,
    *,
    progress: bool = True,
    world: World | None = None,
    resume: bool = False,
    resume_allow: tuple[str, ...] = (),
) -> StudentRun:
    """Train the pipeline's student as one variant: a name from ``compare`` or a shorthand (``cached``: targets from
    the store, ``online``: a live teacher, ``scratch``: none), with the variant's ``set`` overrides applied and on
    views picked by ``views.policy``.

    With ``world`` of several processes (``torchrun``) this joins the process group and trains under DDP; rank 0
    writes the checkpoints and the student. ``resume`` continues from ``checkpoint_path(cfg, variant)``, refusing a
    pipeline that differs from the one that wrote it in a setting that decides the remaining steps, except the kinds
    of change ``resume_allow`` names (``--resume-allow``; :data:`kdcache.train.pinning.OVERRIDES`, each logged).
    """
    world = world or World()
    progress = progress and world.is_main
    spec = cfg.variant(variant)
    cfg = variant_config(cfg, spec)
    stages = cfg.variant_stages(spec)
    with process_group(world, device_of(cfg)) as device:
        data, source = _student_data(cfg, spec.source, stages, device, progress=progress)
        student = build_student(cfg)
        kwargs = {} if source is None else {"targets": source}
        ckpt = cfg.student.checkpoint
        result = fit(
            student,
            data,
            ViewDataset(load_split(cfg, cfg.data.test_split), eval_views(cfg)),
            stages=stages,
            setup=loss_setup(cfg),
            batch_size=cfg.student.train.batch_size,
            seed=cfg.seed,
            device=device,
            num_workers=cfg.student.train.num_workers,
            progress=progress,
            desc=variant,
            world=world,
            checkpoint=Checkpointing(
                checkpoint_path(cfg, variant),
                every_steps=ckpt.every_steps,
                resume=resume,
                allow_changes=tuple(resume_allow),
            ),
            sample_log=cfg.out / "samples" / f"student-{variant}" if ckpt.log_samples else None,
            stop_after_steps=ckpt.stop_after_steps,
            **kwargs,
        )
    if world.is_main:
        save_model(student.cpu(), cfg.out / f"student-{variant}.safetensors", spec=model_spec(cfg, "student"))
    return StudentRun(variant, result)


def variant_config(cfg: DistillConfig, variant: VariantConfig) -> DistillConfig:
    """The pipeline as one variant trains from it: its ``set`` overrides applied and validated."""
    return with_overrides(cfg, variant.set, source=f"compare variant {variant.name!r}") if variant.set else cfg


def check_students(cfg: DistillConfig) -> None:
    """Build the student of the pipeline and of every ``compare`` variant once, before any teacher runs: a mistyped
    ``student.model.arch`` (or a module not on ``PYTHONPATH``, or arguments the model refuses) is an error now, not
    after the teacher was trained and stage one wrote its store."""
    seen: set[str] = set()
    for config in [cfg, *(variant_config(cfg, v) for v in cfg.compare)]:
        model = config.student.model
        key = repr((model.arch, sorted(model.args.items())))
        if key not in seen:
            seen.add(key)
            build_student(config)


def checkpoint_path(cfg: DistillConfig, variant: str) -> Path:
    """Where a student variant's training checkpoint lives (``kdcache train --resume`` reads it)."""
    return cfg.out / "checkpoints" / f"student-{variant}.state.safetensors"


def _student_data(
    cfg: DistillConfig, source: str, stages: list[StageConfig], device: torch.device, *, progress: bool
) -> tuple[ViewDataset, LiveTeacher | None]:
    """The training data for a target ``source``, and the live teacher that supplies targets for ``online``."""
    needed = teacher_targets(stages)
    if source == "cached":  # with cache.store_tokens the sequences come from the store: no corpus is read
        train = None if cfg.cache.store_tokens else load_split(cfg, cfg.data.train_split)
        return cached_data(cfg, train, needed, stored_teacher(cfg)), None
    train = load_split(cfg, cfg.data.train_split)
    live = None
    if source == "online":
        if cfg.teacher.ensemble is not None:
            raise ConfigError(
                "the online variant runs the one live teacher in `teacher`; teacher.ensemble is read from the "
                "store only. Use --variant cached, or remove teacher.ensemble"
            )
        targets = [t for t in targets_to_write(cfg) if t.name in needed]
        live = LiveTeacher(ensure_teacher(cfg, progress=progress), targets, device)
    return ViewDataset(train, view_transform(cfg), policy=cfg.views.policy), live


def stage_two_teacher(cfg: DistillConfig) -> str | Ensemble:
    """The cached teacher stage two reads: ``teacher.name``, or the ensemble of ``teacher.ensemble``."""
    ensemble = cfg.teacher.ensemble
    return cfg.teacher.name if ensemble is None else Ensemble(tuple(ensemble.members), ensemble.mode)
