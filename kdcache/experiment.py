"""From a pipeline config to results: the teacher, stage one, stage two, and the scratch / online / cached comparison.

Each function here does one step the CLI exposes; ``run_pipeline`` chains them and writes the report.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from kdcache.checkpoint import load_model, load_state_dict, read_spec, save_model
from kdcache.config import PipelineConfig, RunSettings, StageConfig, VariantConfig, ViewsConfig, with_overrides
from kdcache.datasets import ClassSubset, SampleDataset, Subset, build_dataset
from kdcache.errors import CheckpointError, ConfigError, StoreMismatchError
from kdcache.fingerprint import dataset_fingerprint, state_digest
from kdcache.losses import LossSetup
from kdcache.metrics import task_metric
from kdcache.models import build_model
from kdcache.precompute import PrecomputeReport, TeacherRun, precompute_local
from kdcache.store import Cache, open_cache
from kdcache.store.layout import VIEW_PARAMS
from kdcache.stream import CachedDataset, ViewDataset
from kdcache.targets import Target, build_target
from kdcache.targets.ensemble import Ensemble
from kdcache.train import LiveTeacher, TrainResult, evaluate, fit
from kdcache.trainstate import Checkpointing
from kdcache.views import ViewTransform, build_view_op
from kdcache.world import World, process_group

log = logging.getLogger(__name__)


@dataclass
class StudentRun:
    """One student training run: its name, which variant, its history and its final test metrics."""

    variant: str
    result: TrainResult
    name: str = ""

    @property
    def metrics(self) -> dict[str, float]:
        return self.result.final


def device_of(cfg: RunSettings) -> torch.device:
    if cfg.device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(cfg.device)


def load_split(cfg: RunSettings, split: str) -> SampleDataset:
    """The train or test split named in the config, restricted to ``data.classes`` (relabelled 0..k-1) and cut to
    ``max_*_samples`` when those are set."""
    dataset = build_dataset(cfg.data.dataset, split, cfg.data.args)
    if cfg.data.classes is not None:
        dataset = ClassSubset(dataset, cfg.data.classes)
    limit = cfg.data.max_train_samples if split == cfg.data.train_split else cfg.data.max_test_samples
    if limit is not None and limit < len(dataset):
        return Subset(dataset, np.arange(limit), tag=f"first-{limit}")
    return dataset


def view_transform(cfg: RunSettings) -> ViewTransform:
    """The pipeline's views: ``views.count`` views per sample, ``views.augment`` ops, then ``data`` normalisation."""
    return ViewTransform(
        count=cfg.views.count,
        seed=cfg.views.seed,
        mean=cfg.data.mean,
        std=cfg.data.std,
        augment=[build_view_op(op.op, op.params) for op in cfg.views.augment],
    )


def eval_views(cfg: RunSettings) -> ViewTransform:
    """The eval view (view 0, no augmentation): what test-time evaluation always sees."""
    return view_transform(cfg).eval_view()


def loss_setup(cfg: RunSettings) -> LossSetup:
    return LossSetup(num_classes=cfg.data.num_classes, ignore_index=cfg.data.ignore_index, task=cfg.data.task)


def cache_targets(cfg: PipelineConfig) -> list[Target]:
    return [build_target(t.kind, t.params) for t in cfg.cache.targets]


def model_spec(cfg: PipelineConfig, role: str) -> dict:
    model = cfg.teacher.model if role == "teacher" else cfg.student.model
    return {"arch": model.arch, "args": model.args, "num_classes": cfg.data.num_classes}


def build_student(cfg: PipelineConfig) -> nn.Module:
    torch.manual_seed(cfg.seed)  # every variant starts from the same initial weights
    return build_model(cfg.student.model.arch, cfg.data.num_classes, cfg.student.model.args)


# ------------------------------------------------------------------------------------------------ teacher
def load_teacher(cfg: PipelineConfig) -> nn.Module:
    """The teacher from its checkpoint (never trained here: dask workers load, they do not train)."""
    path = cfg.teacher_checkpoint
    spec = model_spec(cfg, "teacher")
    teacher = build_model(cfg.teacher.model.arch, cfg.data.num_classes, cfg.teacher.model.args)
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
    return load_model(teacher, path).eval()


def ensure_teacher(cfg: PipelineConfig, *, progress: bool = True) -> nn.Module:
    """The teacher from its checkpoint, training and saving it first when the checkpoint does not exist."""
    path = cfg.teacher_checkpoint
    if path.exists():
        return load_teacher(cfg)
    torch.manual_seed(cfg.seed)
    teacher = build_model(cfg.teacher.model.arch, cfg.data.num_classes, cfg.teacher.model.args)
    spec = model_spec(cfg, "teacher")
    if cfg.teacher.train is None:
        raise CheckpointError(f"teacher checkpoint {str(path)!r} does not exist and the pipeline has no teacher.train")
    log.info("training the teacher (%s) because %s does not exist", cfg.teacher.model.arch, path)
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
    save_model(teacher.cpu(), path, spec=spec)
    return teacher.eval()


def teacher_test_metrics(cfg: PipelineConfig, teacher: nn.Module) -> dict[str, float]:
    test = ViewDataset(load_split(cfg, cfg.data.test_split), eval_views(cfg))
    metric = task_metric(cfg.data.task, cfg.data.num_classes, cfg.data.ignore_index)
    return evaluate(teacher, test, batch_size=256, device=device_of(cfg), metric=metric)


# ------------------------------------------------------------------------------------------------ stage one
def teacher_run(cfg: PipelineConfig, teacher: nn.Module) -> TeacherRun:
    """The pipeline's teacher bound to its train split, views and targets (what every stage-one shard needs)."""
    return TeacherRun(
        teacher,
        load_split(cfg, cfg.data.train_split),
        targets=cache_targets(cfg),
        views=view_transform(cfg),
        num_classes=cfg.data.num_classes,
        teacher_name=cfg.teacher.name,
        teacher_spec=model_spec(cfg, "teacher"),
        batch_size=cfg.cache.batch_size,
        device=device_of(cfg),
        ignore_index=cfg.data.ignore_index,
    )


def run_precompute(
    cfg: PipelineConfig,
    *,
    progress: bool = True,
    workers: int | None = None,
    scheduler: str | None = None,
    break_lock: bool = False,
) -> PrecomputeReport:
    """Stage one for the pipeline's teacher: in this process, or on dask with ``workers`` local worker processes
    or the cluster at ``scheduler`` (see :mod:`kdcache.distributed`). ``break_lock`` takes over the store's writer
    lock from a writer that died."""
    if workers is not None or scheduler is not None:
        from kdcache.distributed import precompute_on_dask

        return precompute_on_dask(cfg, workers=workers, scheduler=scheduler, progress=progress, break_lock=break_lock)
    with teacher_run(cfg, ensure_teacher(cfg, progress=progress)) as run:
        return precompute_local(
            run, cfg.store_url, shard_samples=cfg.cache.shard_samples, progress=progress, break_lock=break_lock
        )


# ------------------------------------------------------------------------------------------------ stage two
def open_checked_cache(cfg: PipelineConfig, train: SampleDataset) -> Cache:
    """Open the store and refuse it unless it is complete and made from this data, views and class count."""
    cache = open_cache(cfg.store_url)
    for name in cfg.teacher_names:
        cache.require_complete(name)
        logits = cache.teacher(name).targets.get("logits")
        if logits is None:
            continue
        classes = next(iter(logits.arrays.values())).shape[2]
        if classes != cfg.data.num_classes:
            raise StoreMismatchError(
                f"store {cache.url!r}: teacher {name!r} has {classes} classes, but the pipeline trains a "
                f"{cfg.data.num_classes}-class student (data.num_classes). Fix data.num_classes or use a store made "
                "for this task"
            )
    if cfg.teacher.ensemble is None:
        require_pipeline_teacher(cfg, cache)
    cache.require_dataset(dataset_fingerprint(train, num_classes=cfg.data.num_classes))
    cache.require_views(view_transform(cfg).spec())
    return cache


def require_pipeline_teacher(cfg: PipelineConfig, cache: Cache) -> None:
    """Refuse a store whose teacher was not made by the pipeline's teacher: another architecture, or (when the
    checkpoint is still on disk) other weights. The checkpoint's tensors are hashed; the model is never built.
    ``cache.allow_teacher_mismatch`` trains from the stored outputs anyway, with a warning."""
    found = cache.teacher(cfg.teacher.name).fingerprint
    problems = []
    if found.get("spec") != model_spec(cfg, "teacher"):
        problems.append(
            f"architecture: the store's is {found.get('spec')}, the pipeline's {model_spec(cfg, 'teacher')}"
        )
    path = cfg.teacher_checkpoint
    if path.exists():
        digest = state_digest(load_state_dict(path))
        if digest != found.get("state_sha256"):
            problems.append(
                f"weights: {str(path)!r} hashes to {digest[:12]}…, the store's teacher to "
                f"{str(found.get('state_sha256'))[:12]}…"
            )
    if not problems:
        return
    message = (
        f"store {cache.url!r}: teacher {cfg.teacher.name!r} was not made by this pipeline's teacher ("
        + "; ".join(problems)
        + ")"
    )
    if cfg.cache.allow_teacher_mismatch:
        log.warning("%s; training from the stored outputs because cache.allow_teacher_mismatch is set", message)
        return
    raise StoreMismatchError(
        f"{message}. Re-run `kdcache precompute` to cache this teacher (under another teacher.name to keep the old "
        "one), or set cache.allow_teacher_mismatch: true to train from the stored outputs anyway (logged)"
    )


def train_student(
    cfg: PipelineConfig,
    variant: str,
    *,
    progress: bool = True,
    world: World | None = None,
    resume: bool = False,
) -> StudentRun:
    """Train the pipeline's student as one variant: a name from ``compare`` or a shorthand (``cached``: targets from
    the store, ``online``: a live teacher, ``scratch``: none), with the variant's ``set`` overrides applied and on
    views picked by ``views.policy``.

    With ``world`` of several processes (``torchrun``) this joins the process group and trains under DDP; rank 0
    writes the checkpoints and the student. ``resume`` continues from ``checkpoint_path(cfg, variant)``.
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
            checkpoint=Checkpointing(checkpoint_path(cfg, variant), every_steps=ckpt.every_steps, resume=resume),
            sample_log=cfg.out / "samples" / f"student-{variant}" if ckpt.log_samples else None,
            stop_after_steps=ckpt.stop_after_steps,
            **kwargs,
        )
    if world.is_main:
        save_model(student.cpu(), cfg.out / f"student-{variant}.safetensors", spec=model_spec(cfg, "student"))
    return StudentRun(variant, result)


def variant_config(cfg: PipelineConfig, variant: VariantConfig) -> PipelineConfig:
    """The pipeline as one variant trains from it: its ``set`` overrides applied and validated."""
    return with_overrides(cfg, variant.set, source=f"compare variant {variant.name!r}") if variant.set else cfg


def checkpoint_path(cfg: PipelineConfig, variant: str) -> Path:
    """Where a student variant's training checkpoint lives (``kdcache train --resume`` reads it)."""
    return cfg.out / "checkpoints" / f"student-{variant}.state.safetensors"


def _student_data(
    cfg: PipelineConfig, source: str, stages: list[StageConfig], device: torch.device, *, progress: bool
) -> tuple[ViewDataset, LiveTeacher | None]:
    """The training data for a target ``source``, and the live teacher that supplies targets for ``online``."""
    train = load_split(cfg, cfg.data.train_split)
    needed = sorted({t for stage in stages for loss in stage.losses for t in loss.teacher_targets()})
    if source == "cached":
        data = CachedDataset(
            train,
            open_checked_cache(cfg, train),
            teacher=stage_two_teacher(cfg),
            targets=needed,
            views=view_transform(cfg),
            policy=cfg.views.policy,
            ram_budget_bytes=cfg.cache.ram_budget_mb * 1024**2,
        )
        return data, None
    live = None
    if source == "online":
        if cfg.teacher.ensemble is not None:
            raise ConfigError(
                "the online variant runs the one live teacher in `teacher`; teacher.ensemble is read from the "
                "store only. Use --variant cached, or remove teacher.ensemble"
            )
        targets = [t for t in cache_targets(cfg) if t.name in needed]
        live = LiveTeacher(ensure_teacher(cfg, progress=progress), targets, device)
    return ViewDataset(train, view_transform(cfg), policy=cfg.views.policy), live


def stage_two_teacher(cfg: PipelineConfig) -> str | Ensemble:
    """The cached teacher stage two reads: ``teacher.name``, or the ensemble of ``teacher.ensemble``."""
    ensemble = cfg.teacher.ensemble
    return cfg.teacher.name if ensemble is None else Ensemble(tuple(ensemble.members), ensemble.mode)


def store_size(cfg: PipelineConfig, report: PrecomputeReport) -> dict:
    """Where the pipeline's store is, its view count, bytes on disk (whole store and per cached sample), each
    target's and the view parameters' bytes per sample, and the stage-one rate of ``report``."""
    from kdcache.summary import array_bytes

    cache = open_cache(cfg.store_url)
    n = max(cache.num_samples, 1)
    total = cache.location.disk_usage()
    targets = cache.teacher(cfg.teacher.name).targets
    per_target = {name: sum(array_bytes(cache, a.path) for a in t.arrays.values()) / n for name, t in targets.items()}
    return {
        "url": cfg.store_url,
        "views": cfg.views.count,
        "bytes": total,
        "bytes_per_sample": total / n,
        "target_bytes_per_sample": per_target,
        "params_bytes_per_sample": array_bytes(cache, VIEW_PARAMS) / n,
        "precompute_seconds": report.seconds,
        "samples_per_second": report.samples_per_second,
    }


def views_text(views: ViewsConfig, policy: str | None = None) -> str:
    """How a run's training inputs are viewed (under ``policy``, default ``views.policy``), for report tables."""
    policy = policy or views.policy
    if not views.augment:
        return "no augmentation"
    if policy == "fresh":
        return "fresh view each epoch"
    return f"{views.count} view{'s' if views.count > 1 else ''}, {policy}"


def rate_text(rate: PrecomputeReport | float | None) -> str:
    """Stage one's samples/s (of a report, or the figure itself), or "already cached" when nothing was written."""
    if isinstance(rate, PrecomputeReport):
        rate = rate.samples_per_second
    return "already cached" if rate is None else f"{rate:,.0f}"


def output_path(cfg: RunSettings, name: str) -> Path:
    cfg.out.mkdir(parents=True, exist_ok=True)
    return cfg.out / name


# ------------------------------------------------------------------------------------------------ planning
def plan_storage(cfg: PipelineConfig) -> list[dict]:
    """Bytes per sample and store size of every array the pipeline would write, before any teacher runs.

    Shapes come from one dummy forward pass of an untrained teacher of the configured architecture. Sizes are
    uncompressed (compressed arrays will be smaller on disk).
    """
    from kdcache.store import plan_shard_samples

    train = load_split(cfg, cfg.data.train_split)
    teacher = build_model(cfg.teacher.model.arch, cfg.data.num_classes, cfg.teacher.model.args)
    with TeacherRun(
        teacher,
        train,
        targets=cache_targets(cfg),
        views=view_transform(cfg),
        num_classes=cfg.data.num_classes,
        teacher_name=cfg.teacher.name,
    ) as run:
        layouts = run.layouts
    specs = [(name, rel, spec) for name, layout in layouts.items() for rel, spec in layout.arrays.items()]
    n = len(train)
    shard = cfg.cache.shard_samples or plan_shard_samples([s.bytes_per_sample for _, _, s in specs], n)
    return [
        {
            "target": name,
            "array": rel,
            "shape": [n, *spec.shape(1)[1:]],
            "dtype": spec.dtype,
            "bytes_per_sample": spec.bytes_per_sample,
            "total_bytes": spec.bytes_per_sample * n,
            "chunk_samples": spec.chunk_samples(shard),
            "shard_samples": shard,
            "compressor": spec.compressor,
        }
        for name, rel, spec in specs
    ]
