"""The commands that run a pipeline file: ``precompute``, ``train``, ``run`` and ``plan``.

Each command imports the pipeline layer (and with it torch) when it runs, never when the parser is built: ``kdcache
--help`` and a mistyped argument answer at once.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from kdcache.pipeline import DistillConfig

Command = Callable[[argparse.Namespace], int]

RESUME_CHANGES = ("lr", "weight_decay", "store", "unpinned")
"""The kinds of change ``--resume-allow`` takes: the keys of :data:`kdcache.train.pinning.OVERRIDES` (a test holds
them equal), written here so the parser needs no torch; an unknown kind is refused before training, with each
kind's meaning."""


def load(args: argparse.Namespace) -> DistillConfig:
    """The validated method distill pipeline of ``args`` (its ``--set`` overrides applied): what ``precompute``,
    ``train`` and ``plan`` take; only ``run`` takes scheme pipelines."""
    from kdcache.pipeline import distill_pipeline, load_pipeline

    return distill_pipeline(load_pipeline(args.pipeline, args.set), f"`kdcache {args.command}` ({args.pipeline})")


def precompute(args: argparse.Namespace) -> int:
    from kdcache.pipeline import run_precompute
    from kdcache.pipeline.compare import rate_text

    report = run_precompute(
        load(args), progress=not args.quiet, workers=args.workers, scheduler=args.scheduler, break_lock=args.break_lock
    )
    acc = "—" if report.accuracy is None else f"{100 * report.accuracy:.2f}%"
    print(
        f"{report.store}: teacher {report.teacher!r} — {report.shards_written} shard(s) written, "
        f"{report.shards_skipped} already committed, {rate_text(report)} samples/s, "
        f"{'complete' if report.complete else 'incomplete'}, accuracy on cached samples {acc}"
    )
    return 0


def train(args: argparse.Namespace) -> int:
    from kdcache.metrics import metric_text
    from kdcache.pipeline import train_student
    from kdcache.train import World
    from kdcache.train.pinning import check_overrides

    check_overrides(tuple(args.resume_allow))
    world = World.from_env()  # the one place that reads torchrun's RANK / WORLD_SIZE / LOCAL_RANK
    run = train_student(
        load(args),
        args.variant,
        progress=not args.quiet,
        world=world,
        resume=args.resume,
        resume_allow=tuple(args.resume_allow),
    )
    if world.is_main:
        metrics = ", ".join(f"{k} {metric_text(k, v)}" for k, v in run.metrics.items())
        print(f"student ({args.variant}): {metrics} in {run.result.seconds:.1f} s")
    return 0


def run(args: argparse.Namespace) -> int:
    from kdcache.pipeline import load_pipeline, run_pipeline

    run_pipeline(load_pipeline(args.pipeline, args.set), progress=not args.quiet)
    return 0


def plan(args: argparse.Namespace) -> int:
    from kdcache.pipeline import plan_storage
    from kdcache.pipeline.distill import check_students
    from kdcache.pipeline.plan import token_budget
    from kdcache.tables import render_table

    cfg = load(args)
    check_students(cfg)  # the plan of a pipeline whose student would not build is an error, as the teacher's is
    rows = plan_storage(cfg)
    tokens = any(r.bytes_per_token is not None for r in rows)  # text: a bytes/token column
    table = [
        [
            r.target,
            r.array,
            str(r.shape),
            r.dtype,
            f"{r.bytes_per_sample:,}",
            *([f"{r.bytes_per_token:,.1f}"] if r.bytes_per_token is not None else []),
            f"{r.total_bytes / 1e6:,.2f}",
            str(r.chunk_samples),
            str(r.shard_samples),
            r.compressor,
        ]
        for r in rows
    ]
    total = sum(r.total_bytes for r in rows)
    per_sample = sum(r.bytes_per_sample for r in rows)
    per_token = [f"{sum(r.bytes_per_token or 0 for r in rows):,.1f}"] if tokens else []
    table.append(["total", "", "", "", f"{per_sample:,}", *per_token, f"{total / 1e6:,.2f}", "", "", ""])
    header = [
        "target",
        "array",
        "shape",
        "dtype",
        "bytes/sample",
        *(["bytes/token"] if tokens else []),
        "MB (uncompressed)",
        "chunk",
        "shard",
        "codec",
    ]
    render_table("storage plan", header, table)
    for line in token_budget(cfg, rows):
        print(line)
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    """Add the pipeline commands to the ``kdcache`` parser."""
    p = _pipeline_parser(
        sub, "precompute", precompute, "stage one: run the teacher once and write its targets to the store"
    )
    cluster = p.add_mutually_exclusive_group()
    cluster.add_argument(
        "--workers",
        type=int,
        default=None,
        metavar="N",
        help="run on a dask LocalCluster of N one-thread worker processes, one task per shard range "
        "(without --workers or --scheduler: in this process)",
    )
    cluster.add_argument(
        "--scheduler",
        default=None,
        metavar="ADDRESS",
        help="run on the existing dask cluster at ADDRESS (e.g. tcp://10.0.0.5:8786)",
    )
    p.add_argument(
        "--break-lock",
        action="store_true",
        help="take over the store's writer lock left by a writer that died (never while it still runs)",
    )
    p = _pipeline_parser(
        sub, "train", train, "stage two: train the student from the store (under torchrun: DDP, one rank per process)"
    )
    p.add_argument(
        "--variant",
        default="cached",
        help="a variant of the pipeline's compare list, or scratch / online / cached (the target source)",
    )
    p.add_argument(
        "--resume",
        action="store_true",
        help="continue from <output_dir>/checkpoints/student-<variant>.state.safetensors (from the start "
        "if absent); refused when the pipeline changed a setting that decides the remaining steps",
    )
    p.add_argument(
        "--resume-allow",
        action="append",
        default=[],
        metavar="CHANGE",
        help=f"with --resume, accept this kind of change (logged; repeat for several): "
        f"{', '.join(RESUME_CHANGES)} (docs/distributed-training.md says what each means)",
    )
    _pipeline_parser(sub, "plan", plan, "bytes per sample and store size of each target, before any teacher runs")
    _pipeline_parser(
        sub, "run", run, "teacher, stage one and the compared students, or a scheme (method: lwf, rocket, selfkd)"
    )


def _pipeline_parser(
    sub: argparse._SubParsersAction, name: str, func: Command, help_text: str
) -> argparse.ArgumentParser:
    p = sub.add_parser(
        name, help=help_text, description=help_text, formatter_class=argparse.ArgumentDefaultsHelpFormatter
    )
    p.add_argument("pipeline", help="pipeline YAML file")
    p.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a config value, e.g. student.train.stages.0.epochs=2",
    )
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.set_defaults(func=func)
    return p
