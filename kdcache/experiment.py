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

from kdcache.checkpoint import load_model, read_spec, save_model
from kdcache.config import CompareRun, LossConfig, PipelineConfig, StageConfig, ViewsConfig, with_overrides
from kdcache.datasets import SampleDataset, Subset, build_dataset
from kdcache.errors import CheckpointError, StoreMismatchError
from kdcache.fingerprint import dataset_fingerprint
from kdcache.losses import LossSetup
from kdcache.models import build_model
from kdcache.precompute import PrecomputeReport, precompute
from kdcache.store import Cache, open_cache
from kdcache.store.layout import VIEW_PARAMS
from kdcache.stream import CachedDataset, ViewDataset
from kdcache.targets import Target, build_target
from kdcache.train import LiveTeacher, TrainResult, evaluate, fit
from kdcache.views import ViewTransform, build_view_op

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


def device_of(cfg: PipelineConfig) -> torch.device:
    if cfg.device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(cfg.device)


def load_split(cfg: PipelineConfig, split: str) -> SampleDataset:
    """The train or test split named in the config, cut to ``max_*_samples`` when set (CI-sized runs)."""
    dataset = build_dataset(cfg.data.dataset, split, cfg.data.args)
    limit = cfg.data.max_train_samples if split == cfg.data.train_split else cfg.data.max_test_samples
    if limit is not None and limit < len(dataset):
        return Subset(dataset, np.arange(limit), tag=f"first-{limit}")
    return dataset


def view_transform(cfg: PipelineConfig) -> ViewTransform:
    """The pipeline's views: ``views.count`` views per sample, ``views.augment`` ops, then ``data`` normalisation."""
    return ViewTransform(
        count=cfg.views.count,
        seed=cfg.views.seed,
        mean=cfg.data.mean,
        std=cfg.data.std,
        augment=[build_view_op(op.op, op.params) for op in cfg.views.augment],
    )


def eval_views(cfg: PipelineConfig) -> ViewTransform:
    """The eval view (view 0, no augmentation): what test-time evaluation always sees."""
    return view_transform(cfg).eval_view()


def loss_setup(cfg: PipelineConfig) -> LossSetup:
    return LossSetup(num_classes=cfg.data.num_classes, ignore_index=cfg.data.ignore_index)


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
    """The teacher from its checkpoint (never trained here); a missing or mismatched checkpoint is an error."""
    path = cfg.teacher_checkpoint
    spec = model_spec(cfg, "teacher")
    torch.manual_seed(cfg.seed)
    teacher = build_model(cfg.teacher.model.arch, cfg.data.num_classes, cfg.teacher.model.args)
    if not path.exists():
        raise CheckpointError(
            f"teacher checkpoint {str(path)!r} does not exist; set teacher.checkpoint to the teacher's weights, or "
            "train it with `kdcache precompute` (needs teacher.train)"
        )
    stored = read_spec(path)
    if stored and stored != spec:
        raise CheckpointError(
            f"teacher checkpoint {str(path)!r} is a {stored}, but the pipeline's teacher is {spec}. "
            "Point teacher.checkpoint at the right file or delete it to retrain"
        )
    return load_model(teacher, path).eval()


def ensure_teacher(cfg: PipelineConfig, *, progress: bool = True) -> nn.Module:
    """The teacher from its checkpoint, training and saving it first when the checkpoint does not exist.

    The teacher trains on fresh views (a new augmented view of every sample each epoch; the plain inputs when
    ``views.augment`` is empty), so its weights do not depend on how many views a store caches.
    """
    path = cfg.teacher_checkpoint
    if path.exists() or cfg.teacher.train is None:
        return load_teacher(cfg)
    spec = model_spec(cfg, "teacher")
    torch.manual_seed(cfg.seed)
    teacher = build_model(cfg.teacher.model.arch, cfg.data.num_classes, cfg.teacher.model.args)
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
    return evaluate(teacher, test, batch_size=256, device=device_of(cfg), ignore_index=cfg.data.ignore_index)


# ------------------------------------------------------------------------------------------------ stage one
def run_precompute(cfg: PipelineConfig, *, progress: bool = True) -> PrecomputeReport:
    teacher = ensure_teacher(cfg, progress=progress)
    return precompute(
        teacher,
        load_split(cfg, cfg.data.train_split),
        cfg.store_url,
        targets=cache_targets(cfg),
        views=view_transform(cfg),
        num_classes=cfg.data.num_classes,
        teacher_name=cfg.teacher.name,
        teacher_spec=model_spec(cfg, "teacher"),
        batch_size=cfg.cache.batch_size,
        shard_samples=cfg.cache.shard_samples,
        device=device_of(cfg),
        ignore_index=cfg.data.ignore_index,
        progress=progress,
    )


# ------------------------------------------------------------------------------------------------ stage two
def open_checked_cache(cfg: PipelineConfig, train: SampleDataset) -> Cache:
    """Open the store and refuse it unless it is complete and made from this data, views and class count."""
    cache = open_cache(cfg.store_url)
    cache.require_complete(cfg.teacher.name)
    record = cache.teacher(cfg.teacher.name)
    logits = record.targets.get("logits")
    if logits is not None:
        classes = next(iter(logits.arrays.values())).shape[2]
        if classes != cfg.data.num_classes:
            raise StoreMismatchError(
                f"store {cache.url!r}: teacher {cfg.teacher.name!r} has {classes} classes, but the pipeline trains a "
                f"{cfg.data.num_classes}-class student (data.num_classes). Fix data.num_classes or use a store made "
                "for this task"
            )
    cache.require_dataset(dataset_fingerprint(train, num_classes=cfg.data.num_classes))
    cache.require_views(view_transform(cfg).spec())
    return cache


def train_student(cfg: PipelineConfig, variant: str, *, name: str | None = None, progress: bool = True) -> StudentRun:
    """Train the pipeline's student as ``cached`` (targets from the store), ``online`` (live teacher) or ``scratch``,
    on views picked by ``views.policy``; the weights go to ``<output_dir>/student-<name or variant>.safetensors``."""
    train = load_split(cfg, cfg.data.train_split)
    test = ViewDataset(load_split(cfg, cfg.data.test_split), eval_views(cfg))
    stages = cfg.student.train.stages if variant != "scratch" else scratch_stages(cfg)
    needed = sorted({t for s in stages for l in s.losses for t in _loss_targets(cfg, l)})
    source = None
    if variant == "cached":
        data: ViewDataset = CachedDataset(
            train,
            open_checked_cache(cfg, train),
            teacher=cfg.teacher.name,
            targets=needed,
            views=view_transform(cfg),
            policy=cfg.views.policy,
            ram_budget_bytes=cfg.cache.ram_budget_mb * 1024**2,
        )
    else:
        data = ViewDataset(train, view_transform(cfg), policy=cfg.views.policy)
        if variant == "online":
            targets = [t for t in cache_targets(cfg) if t.name in needed]
            source = LiveTeacher(ensure_teacher(cfg, progress=progress), targets, device_of(cfg))
    student = build_student(cfg)
    kwargs = {} if source is None else {"targets": source}
    result = fit(
        student,
        data,
        test,
        stages=stages,
        setup=loss_setup(cfg),
        batch_size=cfg.student.train.batch_size,
        seed=cfg.seed,
        device=device_of(cfg),
        num_workers=cfg.student.train.num_workers,
        progress=progress,
        desc=name or variant,
        **kwargs,
    )
    save_model(student.cpu(), cfg.out / f"student-{name or variant}.safetensors", spec=model_spec(cfg, "student"))
    return StudentRun(variant, result, name or variant)


def scratch_stages(cfg: PipelineConfig) -> list[StageConfig]:
    """The student's schedule with the task loss only: same epochs and optimiser, no teacher."""
    epochs = sum(s.epochs for s in cfg.student.train.stages)
    last = cfg.student.train.stages[-1]
    return [StageConfig(name="scratch", epochs=epochs, optimizer=last.optimizer, losses=list(cfg.scratch_losses))]


def _loss_targets(cfg: PipelineConfig, loss: LossConfig) -> list[str]:
    from kdcache.losses import LOSSES

    cls = LOSSES.get(loss.name)
    return cls(cls.Params.model_validate(loss.params), loss_setup(cfg)).teacher_targets()


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


def output_path(cfg: PipelineConfig, name: str) -> Path:
    cfg.out.mkdir(parents=True, exist_ok=True)
    return cfg.out / name


# ------------------------------------------------------------------------------------------------ the whole job
def compare_configs(cfg: PipelineConfig) -> list[tuple[CompareRun, PipelineConfig]]:
    """Every ``compare`` entry with the config it trains from (``set`` overrides applied and validated up front)."""
    return [
        (run, with_overrides(cfg, run.set, source=f"compare entry {run.label!r}") if run.set else cfg)
        for run in cfg.compare_runs
    ]


def run_pipeline(cfg: PipelineConfig, *, progress: bool = True) -> dict:
    """Teacher, stage one, then every student in ``cfg.compare`` from the same seed; prints and writes the report.

    Each cached entry reads the store of its own config, built here first when missing (so a ``views.count=1``
    entry gets a single-view store beside the pipeline's V-view one).
    """
    from kdcache.report import write_json

    runs = compare_configs(cfg)
    teacher = ensure_teacher(cfg, progress=progress)
    teacher_metrics = teacher_test_metrics(cfg, teacher)
    stores: dict[str, dict] = {}
    for store_cfg in [cfg, *(c for run, c in runs if run.variant == "cached")]:
        if store_cfg.store_url not in stores:
            report = run_precompute(store_cfg, progress=progress)
            stores[store_cfg.store_url] = {**store_size(store_cfg, report), "teacher_accuracy": report.accuracy}
    students = {run.label: (train_student(c, run.variant, name=run.label, progress=progress), c) for run, c in runs}
    summary = {
        "pipeline": cfg.name,
        "teacher": {"test": teacher_metrics, "cached_samples_accuracy": stores[cfg.store_url]["teacher_accuracy"]},
        "store": stores[cfg.store_url],
        "stores": list(stores.values()),
        "students": {
            label: {
                "variant": r.variant,
                "views": {"count": c.views.count, "policy": c.views.policy, "augment": bool(c.views.augment)},
                "test": r.metrics,
                "seconds": r.result.seconds,
            }
            for label, (r, c) in students.items()
        },
    }
    _report(cfg, teacher_metrics, stores, students)
    write_json(output_path(cfg, "results.json"), summary)
    return summary


def _report(
    cfg: PipelineConfig,
    teacher_metrics: dict[str, float],
    stores: dict[str, dict],
    students: dict[str, tuple[StudentRun, PipelineConfig]],
) -> None:
    """The results and store tables (terminal and results.md) and the test-accuracy curves (curves.png)."""
    from kdcache.report import markdown_table, pct, plot_curves, render_table

    header = ["model", "views", "test accuracy", "wall time (s)"]
    teacher_views = views_text(cfg.views, "fresh") if cfg.teacher.train is not None else "—"
    rows = [["teacher", teacher_views, pct(teacher_metrics["accuracy"]), "—"]]
    rows += [
        [f"student ({label})", views_text(c.views), pct(r.metrics["accuracy"]), f"{r.result.seconds:.1f}"]
        for label, (r, c) in students.items()
    ]
    render_table(f"{cfg.name}: test split", header, rows)
    store_header = [
        "store",
        "views",
        "bytes on disk",
        "bytes / sample",
        "target bytes / sample",
        "params B / sample",
        "precompute samples/s",
    ]
    store_rows = [
        [
            s["url"],
            str(s["views"]),
            f"{s['bytes']:,}",
            f"{s['bytes_per_sample']:.1f}",
            ", ".join(f"{name} {size:.1f}" for name, size in s["target_bytes_per_sample"].items()),
            f"{s['params_bytes_per_sample']:.1f}",
            rate_text(s["samples_per_second"]),
        ]
        for s in stores.values()
    ]
    render_table("cache", store_header, store_rows)
    output_path(cfg, "results.md").write_text(
        f"## {cfg.name}\n\n" + markdown_table(header, rows) + "\n" + markdown_table(store_header, store_rows)
    )
    plot_curves(
        {f"student ({label})": r.result for label, (r, _) in students.items()},
        output_path(cfg, "curves.png"),
        reference={"teacher": teacher_metrics["accuracy"]},
        title=cfg.name,
    )
