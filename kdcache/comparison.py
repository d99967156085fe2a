"""``kdcache run``: the teacher, stage one, and every student variant from one seed, reported side by side."""

from __future__ import annotations

from kdcache.config import PipelineConfig, RunSettings
from kdcache.experiment import (
    ensure_teacher,
    output_path,
    rate_text,
    run_precompute,
    store_size,
    teacher_test_metrics,
    train_student,
)
from kdcache.report import markdown_table, pct, plot_curves, render_table, write_json
from kdcache.train import EpochLog, TrainResult

METRIC = "accuracy"


def epochs_to_reach(result: TrainResult, threshold: float, metric: str = METRIC) -> EpochLog | None:
    """The first epoch whose test ``metric`` is at least ``threshold``."""
    return next((log for log in result.history if log.metrics.get(metric, float("-inf")) >= threshold), None)


def run_pipeline(cfg: RunSettings, *, progress: bool = True) -> dict:
    """Teacher, stage one, then every student variant in ``cfg.compare``; prints and writes the report. A pipeline
    of another ``method`` (lwf, rocket, selfkd) goes to its scheme's runner (:mod:`kdcache.schemes`)."""
    if not isinstance(cfg, PipelineConfig):
        from kdcache.schemes import run_scheme

        return run_scheme(cfg, progress=progress)
    teacher_metrics = teacher_test_metrics(cfg, ensure_teacher(cfg, progress=progress))
    report = run_precompute(cfg, progress=progress)
    total, per_sample, per_target = store_size(cfg)
    runs = {v.name: train_student(cfg, v.name, progress=progress).result for v in cfg.compare}
    reference = next((v.name for v in cfg.compare if v.source == "none"), None)
    scratch_final = runs[reference].final[METRIC] if reference is not None else None
    reach = {v: epochs_to_reach(r, scratch_final) if scratch_final is not None else None for v, r in runs.items()}

    header = ["model", f"test {METRIC}", "epochs to reach scratch's final", "wall time (s)"]
    rows = [["teacher", pct(teacher_metrics[METRIC]), "", "—"]]
    rows += [
        [f"student ({v})", pct(r.final[METRIC]), _epochs_text(reach[v], r), f"{r.seconds:.1f}"] for v, r in runs.items()
    ]
    targets_text = ", ".join(f"{name} {size:.1f}" for name, size in per_target.items())
    store_header = ["store", "bytes on disk", "bytes / sample", "target bytes / sample", "precompute samples/s"]
    store_rows = [[cfg.store_url, f"{total:,}", f"{per_sample:.1f}", targets_text, rate_text(report)]]
    render_table(f"{cfg.name}: test split", header, rows)
    render_table("cache", store_header, store_rows)
    output_path(cfg, "results.md").write_text(
        f"## {cfg.name}\n\n" + markdown_table(header, rows) + "\n" + markdown_table(store_header, store_rows)
    )
    plot_curves(
        {f"student ({v})": r for v, r in runs.items()},
        output_path(cfg, "curves.png"),
        metric=METRIC,
        reference={"teacher": teacher_metrics[METRIC]},
        title=cfg.name,
    )
    summary = {
        "pipeline": cfg.name,
        "teacher": {"test": teacher_metrics, "cached_samples_accuracy": report.accuracy},
        "store": {
            "url": cfg.store_url,
            "bytes": total,
            "bytes_per_sample": per_sample,
            "target_bytes_per_sample": per_target,
            "precompute_seconds": report.seconds,
            "samples_per_second": report.samples_per_second,
        },
        "students": {
            v: {
                "test": r.final,
                "seconds": r.seconds,
                "epochs_to_reach_scratch": None if reach[v] is None else reach[v].epoch + 1,
                "curve": [log.metrics.get(METRIC) for log in r.history],
            }
            for v, r in runs.items()
        },
    }
    write_json(output_path(cfg, "results.json"), summary)
    return summary


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
