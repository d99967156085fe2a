"""The ``distill`` method of ``kdcache run``: the teacher, stage one, and every student variant from one seed,
reported side by side (terminal table, results.md, results.json, curves.png, storage.png)."""

from __future__ import annotations

from typing import Any

from kdcache.datasets.text import tokens_per_sample
from kdcache.metrics import LOWER_IS_BETTER, METRIC_TITLES, TASK_METRICS, metric_text
from kdcache.pipeline.build import output_path
from kdcache.pipeline.config import DistillConfig, VariantConfig, ViewsConfig
from kdcache.pipeline.distill import StudentRun, check_students, run_precompute, train_student, variant_config
from kdcache.pipeline.methods import METHODS, Method
from kdcache.pipeline.report import plot_curves, plot_storage
from kdcache.pipeline.teacher import ensure_teacher, teacher_test_metrics
from kdcache.precompute import PrecomputeReport
from kdcache.store import VIEW_PARAMS, open_store
from kdcache.tables import markdown_table, render_table, write_json
from kdcache.train import EpochLog, TrainResult


def epochs_to_reach(result: TrainResult, threshold: float, metric: str) -> EpochLog | None:
    """The first epoch whose test ``metric`` is at least ``threshold`` (at most, for perplexity)."""
    sign = -1 if metric in LOWER_IS_BETTER else 1
    return next(
        (log for log in result.history if sign * log.metrics.get(metric, sign * float("-inf")) >= sign * threshold),
        None,
    )


def run_distill(cfg: DistillConfig, *, progress: bool = True) -> dict[str, Any]:
    """Teacher, stage one, then every student variant in ``cfg.compare``; prints and writes the report.

    Each cached variant reads the store of its own config (its ``set`` overrides applied), built here first when
    missing: a ``views.count=1`` variant gets a single-view store beside the pipeline's V-view one. The report has a
    column per metric of the task (accuracy; mIoU and pixel accuracy for segmentation); the first one, the primary
    metric, is the one "epochs to reach" and the curves use.
    """
    check_students(cfg)
    teacher_metrics = teacher_test_metrics(cfg, ensure_teacher(cfg, progress=progress))
    configs = {v.name: variant_config(cfg, v) for v in cfg.compare}
    stores: dict[str, dict] = {}
    for store_cfg in [cfg, *(configs[v.name] for v in cfg.compare if v.source == "cached")]:
        if store_cfg.store_url not in stores:
            report = run_precompute(store_cfg, progress=progress)
            stores[store_cfg.store_url] = {**store_size(store_cfg, report), "teacher_accuracy": report.accuracy}
    runs = {v.name: train_student(cfg, v.name, progress=progress) for v in cfg.compare}
    primary = TASK_METRICS[cfg.data.task][0]
    reach = _epochs_to_reach_scratch(cfg.compare, runs, primary)
    _report(cfg, teacher_metrics, stores, runs, configs, reach)
    summary = {
        "pipeline": cfg.name,
        "teacher": {"test": teacher_metrics, "cached_samples_accuracy": stores[cfg.store_url]["teacher_accuracy"]},
        "store": stores[cfg.store_url],
        "stores": list(stores.values()),
        "students": {
            v.name: {
                "source": v.source,
                "views": {
                    "count": configs[v.name].views.count,
                    "policy": configs[v.name].views.policy,
                    "augment": augmented(configs[v.name].views),
                },
                "test": runs[v.name].metrics,
                "seconds": runs[v.name].result.seconds,
                "epochs_to_reach_scratch": None if (hit := reach[v.name]) is None else hit.epoch + 1,
                "curve": [log.metrics.get(primary) for log in runs[v.name].result.history],
            }
            for v in cfg.compare
        },
    }
    write_json(output_path(cfg, "results.json"), summary)
    return summary


def _epochs_to_reach_scratch(
    variants: list[VariantConfig], runs: dict[str, StudentRun], metric: str
) -> dict[str, EpochLog | None]:
    """For each run, the first epoch at which it reached the final ``metric`` of the first teacher-free variant."""
    reference = next((v.name for v in variants if v.source == "none"), None)
    if reference is None:
        return {name: None for name in runs}
    final = runs[reference].result.final[metric]
    return {name: epochs_to_reach(run.result, final, metric) for name, run in runs.items()}


def _report(
    cfg: DistillConfig,
    teacher_metrics: dict[str, float],
    stores: dict[str, dict],
    runs: dict[str, StudentRun],
    configs: dict[str, DistillConfig],
    reach: dict[str, EpochLog | None],
) -> None:
    """The results and store tables (terminal and results.md), the primary metric's curves (curves.png) and the
    pipeline store's bytes per sample by array (storage.png)."""
    metrics = TASK_METRICS[cfg.data.task]
    header = [
        "model",
        "views",
        *(f"test {METRIC_TITLES[m]}" for m in metrics),
        "epochs to reach scratch's final",
        "wall time (s)",
    ]
    teacher_views = views_text(cfg.views, "fresh") if cfg.teacher.train is not None else "—"
    rows = [["teacher", teacher_views, *(metric_text(m, teacher_metrics[m]) for m in metrics), "", "—"]]
    rows += [
        [
            f"student ({name})",
            views_text(configs[name].views),
            *(metric_text(m, run.result.final[m]) for m in metrics),
            _epochs_text(reach[name], run.result),
            f"{run.result.seconds:.1f}",
        ]
        for name, run in runs.items()
    ]
    store_header, store_rows = _store_table(stores)
    render_table(f"{cfg.name}: test split", header, rows)
    render_table("cache", store_header, store_rows)
    output_path(cfg, "results.md").write_text(
        f"## {cfg.name}\n\n" + markdown_table(header, rows) + "\n" + markdown_table(store_header, store_rows)
    )
    plot_curves(
        {f"student ({name})": run.result for name, run in runs.items()},
        output_path(cfg, "curves.png"),
        metric=metrics[0],
        reference={"teacher": teacher_metrics[metrics[0]]},
        title=cfg.name,
    )
    plot_storage(open_store(cfg.store_url), output_path(cfg, "storage.png"))


def _store_table(stores: dict[str, dict]) -> tuple[list[str], list[list[str]]]:
    """The header and rows of the cache table: every store's size, bytes per sample and stage one's rate."""
    store_header = [
        "store",
        "views",
        "bytes on disk",
        "bytes / sample",
        "target bytes / sample",
        "params B / sample",
        "precompute samples/s",
    ]
    rows = [
        [
            s["url"],
            str(s["views"]),
            f"{s['bytes']:,}",
            f"{s['bytes_per_sample']:.1f}",
            _per_sample_text(s),
            f"{s['params_bytes_per_sample']:.1f}",
            rate_text(s["samples_per_second"]) + _token_rate_text(s),
        ]
        for s in stores.values()
    ]
    return store_header, rows


def _epochs_text(log: EpochLog | None, result: TrainResult) -> str:
    """``12 of 30``, with the epoch within its stage when the run has several stages: ``12 of 30 (task: 2)``."""
    total = len(result.history)
    if log is None:
        return f"never (of {total})"
    stages = list(dict.fromkeys(h.stage for h in result.history))
    if len(stages) == 1:
        return f"{log.epoch + 1} of {total}"
    within = sum(1 for h in result.history if h.stage == log.stage and h.epoch <= log.epoch)
    return f"{log.epoch + 1} of {total} ({log.stage}: {within})"


def store_size(cfg: DistillConfig, report: PrecomputeReport) -> dict:
    """Where the pipeline's store is, its view count, bytes on disk (whole store and per cached sample), each
    target's and the view parameters' bytes per sample, and the stage-one rate of ``report``; for text also the
    tokens per sample (bytes per token follow)."""
    cache = open_store(cfg.store_url)
    n = max(cache.num_samples, 1)
    total = cache.location.disk_usage()
    targets = cache.teacher(cfg.teacher.name).targets
    per_target = {name: sum(cache.array_bytes(a.path) for a in t.arrays.values()) / n for name, t in targets.items()}
    return {
        "tokens_per_sample": tokens_per_sample(cache.manifest.dataset.get("source", {})),
        "url": cfg.store_url,
        "views": cfg.views.count,
        "bytes": total,
        "bytes_per_sample": total / n,
        "target_bytes_per_sample": per_target,
        "params_bytes_per_sample": cache.array_bytes(VIEW_PARAMS) / n,
        "precompute_seconds": report.seconds,
        "samples_per_second": report.samples_per_second,
    }


def _per_sample_text(store: dict) -> str:
    """Each target's bytes per sample, and per token for text (``token_logits_topk 16896.0 (132.0/token)``)."""
    tokens = store.get("tokens_per_sample")
    return ", ".join(
        f"{name} {size:.1f}" + ("" if tokens is None else f" ({size / tokens:.1f}/token)")
        for name, size in store["target_bytes_per_sample"].items()
    )


def _token_rate_text(store: dict) -> str:
    """Stage one's tokens per second, for text stores (`` (46,080 tokens/s)``)."""
    tokens, rate = store.get("tokens_per_sample"), store.get("samples_per_second")
    return "" if tokens is None or rate is None else f" ({rate * tokens:,.0f} tokens/s)"


def views_text(views: ViewsConfig, policy: str | None = None) -> str:
    """How a run's training inputs are viewed (under ``policy``, default ``views.policy``), for report tables."""
    policy = policy or views.policy
    if not augmented(views):
        return "no augmentation"
    if policy == "fresh":
        return "fresh view each epoch"
    return f"{views.count} view{'s' if views.count > 1 else ''}, {policy}"


def augmented(views: ViewsConfig) -> bool:
    """Whether views >= 1 differ from the eval view (kdcache ops, a torchvision pipeline, or mixing)."""
    return bool(views.augment) or views.pipeline is not None or views.mix is not None


def rate_text(rate: PrecomputeReport | float | None) -> str:
    """Stage one's samples/s (of a report, or the figure itself), or "already cached" when nothing was written."""
    if isinstance(rate, PrecomputeReport):
        rate = rate.samples_per_second
    return "already cached" if rate is None else f"{rate:,.0f}"


METHODS.register("distill")(Method(config=DistillConfig, run=run_distill))
