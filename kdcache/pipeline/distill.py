"""The ``distill`` method's steps: stage one for the pipeline's teacher, and one student variant trained from the
store (``cached``), a live teacher (``online``) or the labels alone (``scratch``).

Each function does one step the CLI exposes; :mod:`kdcache.pipeline.compare` chains them into ``kdcache run``.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from kdcache.checkpoint import load_state_dict, save_model, state_digest
from kdcache.datasets import SampleDataset
from kdcache.datasets.tokenizer import load_tokenizer
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
from kdcache.pipeline.config import DistillConfig, VariantConfig
from kdcache.pipeline.loading import with_overrides
from kdcache.pipeline.teacher import ensure_teacher
from kdcache.pipeline.tokens import check_language_model, student_tokenizer
from kdcache.precompute import PrecomputeReport, StageOneJob, check_cluster, run_local, run_on_dask
from kdcache.registry import Factory
from kdcache.store import Requirements, StoreReader, open_store
from kdcache.targets import Ensemble
from kdcache.train import (
    CachedDataset,
    Checkpointing,
    LiveTeacher,
    StageConfig,
    StoredTokens,
    TrainResult,
    ViewDataset,
    World,
    fit,
    process_group,
    require_fresh_teacher,
    require_token_alignment,
    teacher_targets,
)
from kdcache.train.tokens import require_store_tokenizer


@dataclass
class StudentRun:
    """One student training run: which variant, its history and its final test metrics."""

    variant: str
    result: TrainResult

    @property
    def metrics(self) -> dict[str, float]:
        return self.result.final


# ------------------------------------------------------------------------------------------------ stage one
def stage_one_job(
    cfg: DistillConfig, *, teacher: nn.Module | Factory, dataset: SampleDataset | Factory
) -> StageOneJob:
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
    options = {"shard_samples": cfg.cache.shard_samples, "progress": progress, "break_lock": break_lock}
    if workers is None and scheduler is None:
        teacher = ensure_teacher(cfg, progress=progress)
        job = stage_one_job(cfg, teacher=teacher, dataset=load_split(cfg, cfg.data.train_split))
        return run_local(job, cfg.store_url, **options)
    check_cluster(workers, scheduler)  # before the teacher is trained: a typo costs nothing
    if teacher_directory(cfg) is None and not cfg.teacher_checkpoint.exists():  # trained here once; then only the
        ensure_teacher(cfg, progress=progress)  # workers build it (from its checkpoint or its directory)
    teacher_factory, dataset_factory = pipeline_factories(cfg)
    job = stage_one_job(cfg, teacher=teacher_factory, dataset=dataset_factory)
    return run_on_dask(job, cfg.store_url, workers=workers, scheduler=scheduler, **options)


# ------------------------------------------------------------------------------------------------ stage two
def cached_train_split(cfg: DistillConfig, cache: StoreReader) -> SampleDataset:
    """The training split as the cached variants read it: with ``cache.store_tokens`` the sequences the store holds
    (no corpus needed), refused when ``data.args.tokenizer`` — which tokenizes the evaluation split — is on disk and
    is another tokenizer than the store's; else the split's files."""
    if not cfg.cache.store_tokens:
        return load_split(cfg, cfg.data.train_split)
    train = StoredTokens(cache, ram_budget_bytes=cfg.cache.ram_budget_mb * 1024**2)
    path = cfg.data.args.get("tokenizer")
    if path is not None and Path(path).exists():
        require_store_tokenizer(cache, load_tokenizer(path).fingerprint(), "data.args.tokenizer")
    return train


def cached_data(cfg: DistillConfig, train: SampleDataset | None, targets: list[str]) -> CachedDataset:
    """The training split (``None``: the sequences the store holds, :class:`~kdcache.train.StoredTokens`) joined
    with the store's ``targets``, refused unless the store fits this pipeline: complete,
    made from this data, views and class count and — for one teacher — by the pipeline's teacher: its architecture,
    and its weights when the checkpoint is still on disk (hashed; the model is never built), or every file of its
    transformers directory when the teacher is one, used as it is (:func:`~kdcache.train.require_fresh_teacher`).
    ``cache.allow_teacher_mismatch`` trains from the stored outputs anyway, with a warning."""
    cache = open_store(cfg.store_url, shard_cache=cfg.cache.shard_cache,
                       shard_cache_bytes=int(cfg.cache.shard_cache_mb * 1024**2))  # fmt: skip
    if train is None:
        train = cached_train_split(cfg, cache)
        check_language_model(cfg, train)
    if cfg.data.task == "language-model":  # tokenizer, packing and vocabulary first: the errors that name them
        require_token_alignment(cache, train, teacher=stage_two_teacher(cfg), vocab_size=cfg.data.num_classes,
                                tokenizer=student_tokenizer(cfg))  # fmt: skip
    directory = teacher_directory(cfg)
    if directory is not None and directory.is_dir():  # the teacher is its files (when still on disk): unchanged?
        require_fresh_teacher(cache, cfg.teacher.name, directory)
    teachers = tuple(cfg.teacher_names)
    cache.require(Requirements(teachers=teachers, num_classes=cfg.data.num_classes))
    if cfg.teacher.ensemble is None:
        path = cfg.teacher_checkpoint
        cache.require(
            Requirements(
                teachers=teachers,
                teacher_spec=model_spec(cfg, "teacher"),
                teacher_state=state_digest(load_state_dict(path)) if path.exists() else None,
                allow_teacher_mismatch=cfg.cache.allow_teacher_mismatch,
            )
        )
    return CachedDataset(
        train,
        cache,
        teacher=stage_two_teacher(cfg),
        targets=targets,
        views=view_transform(cfg),
        policy=cfg.views.policy,
        ram_budget_bytes=cfg.cache.ram_budget_mb * 1024**2,
        num_classes=cfg.data.num_classes,
    )


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
        return cached_data(cfg, train, needed), None
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
