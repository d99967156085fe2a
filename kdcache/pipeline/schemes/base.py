"""The steps every scheme runner shares: train a network, evaluate it, cache a teacher, read a cached teacher back,
and report a table. Schemes register into :data:`kdcache.pipeline.methods.METHODS` like ``distill``."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from pydantic import Field
from torch import nn

from kdcache.datasets import SampleDataset
from kdcache.errors import StoreMismatchError
from kdcache.losses import LossSetup
from kdcache.pipeline.build import device_of, eval_views, output_path, view_transform
from kdcache.pipeline.config import RunConfig
from kdcache.pipeline.report import plot_curves
from kdcache.precompute import PrecomputeReport, precompute
from kdcache.tables import markdown_table, render_table, write_json
from kdcache.targets import Target
from kdcache.train import LossConfig, OptimizerConfig, StageConfig, TrainResult, ViewDataset, evaluate, fit
from kdcache.train.stages import Section


class Phase(Section):
    """A training phase of a scheme: epochs and optimiser (the losses and frozen parts follow from the scheme)."""

    epochs: int = Field(ge=0)
    optimizer: OptimizerConfig = OptimizerConfig()

    def stage(self, name: str, losses: list[dict[str, Any]], freeze: list[str] | None = None) -> StageConfig:
        return StageConfig(
            name=name,
            epochs=self.epochs,
            optimizer=self.optimizer,
            losses=[LossConfig.model_validate(loss) for loss in losses],
            freeze=freeze or [],
        )


@dataclass
class Trained:
    """One trained row of a scheme's table: the network and its training history."""

    model: nn.Module
    result: TrainResult


def train(
    cfg: RunConfig,
    model: nn.Module,
    data: ViewDataset,
    test: SampleDataset | None,
    stages: list[StageConfig],
    *,
    batch_size: int,
    num_classes: int,
    desc: str,
    progress: bool,
) -> Trained:
    """Train ``model`` through ``stages`` on ``data`` with the pipeline's seed and device (so rows of one table see
    the same batches in the same order), evaluating on ``test`` after every epoch."""
    tests = None if test is None else ViewDataset(test, eval_views(cfg))
    setup = LossSetup(num_classes=num_classes, ignore_index=cfg.data.ignore_index)
    result = fit(
        model,
        data,
        tests,
        stages=stages,
        setup=setup,
        batch_size=batch_size,
        seed=cfg.seed,
        device=device_of(cfg),
        progress=progress,
        desc=desc,
    )
    return Trained(model, result)


def accuracy(cfg: RunConfig, model: nn.Module, dataset: SampleDataset) -> float:
    """Test accuracy of ``model`` on ``dataset`` (view 0, eval transform)."""
    data = ViewDataset(dataset, eval_views(cfg))
    return evaluate(model, data, batch_size=256, device=device_of(cfg), ignore_index=cfg.data.ignore_index)["accuracy"]


def cache_teacher(
    cfg: RunConfig,
    teacher: nn.Module,
    dataset: SampleDataset,
    *,
    store: str,
    name: str,
    spec: dict[str, Any],
    targets: list[Target],
    num_classes: int,
    shard_samples: int | None,
    progress: bool,
) -> PrecomputeReport:
    """Stage one for a teacher a scheme produced: its ``targets`` on ``dataset`` into ``store`` under ``name``.

    Schemes train their teachers in the run, so a store left by an earlier run with other settings holds another
    ``name``; it is refused (never overwritten) with the way out."""
    try:
        return precompute(
            teacher,
            dataset,
            store,
            targets=targets,
            views=view_transform(cfg),
            num_classes=num_classes,
            teacher_name=name,
            teacher_spec=spec,
            shard_samples=shard_samples,
            device=str(device_of(cfg)),
            ignore_index=cfg.data.ignore_index,
            progress=progress,
        )
    except StoreMismatchError as exc:
        raise StoreMismatchError(
            f"{exc}. Pipeline {cfg.name!r} caches the {name!r} it trained in this run; the store was written by an "
            f"earlier run with other settings. Delete {store} or set cache.store to a new path"
        ) from None


def report(
    cfg: RunConfig,
    header: list[str],
    rows: list[list[str]],
    summary: dict[str, Any],
    curves: dict[str, TrainResult],
    *,
    metric_label: str,
) -> dict[str, Any]:
    """Print the table and write ``results.md``, ``results.json`` and ``curves.png`` under the output directory."""
    render_table(f"{cfg.name}: test split", header, rows)
    output_path(cfg, "results.md").write_text(f"## {cfg.name}\n\n" + markdown_table(header, rows))
    write_json(output_path(cfg, "results.json"), {"pipeline": cfg.name, "method": cfg.method, **summary})
    plot = plot_curves(curves, output_path(cfg, "curves.png"), title=f"{cfg.name}: {metric_label} per epoch")
    summary["curves"] = str(plot)
    return summary


def stage_losses(result: TrainResult) -> dict[str, list[float]]:
    """The training loss of every epoch, by stage."""
    losses: dict[str, list[float]] = {}
    for log in result.history:
        losses.setdefault(log.stage, []).append(log.train_loss)
    return losses
