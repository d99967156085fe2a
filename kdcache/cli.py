"""``kdcache`` command line: parse, make one library call, exit. ``kdcache COMMAND --help`` for each command."""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Callable
from pathlib import Path

from kdcache.errors import KdcacheError


def _pipeline(args: argparse.Namespace):  # noqa: ANN202
    from kdcache.config import load_pipeline

    return load_pipeline(args.pipeline, args.set)


def cmd_precompute(args: argparse.Namespace) -> int:
    from kdcache.experiment import rate_text, run_precompute

    report = run_precompute(_pipeline(args), progress=not args.quiet, workers=args.workers, scheduler=args.scheduler)
    acc = "—" if report.accuracy is None else f"{100 * report.accuracy:.2f}%"
    print(
        f"{report.store}: teacher {report.teacher!r} — {report.shards_written} shard(s) written, "
        f"{report.shards_skipped} already committed, {rate_text(report)} samples/s, "
        f"{'complete' if report.complete else 'incomplete'}, accuracy on cached samples {acc}"
    )
    return 0


def cmd_train(args: argparse.Namespace) -> int:
    from kdcache.experiment import train_student

    run = train_student(_pipeline(args), args.variant, progress=not args.quiet)
    metrics = ", ".join(f"{k} {100 * v:.2f}%" for k, v in run.metrics.items())
    print(f"student ({args.variant}): {metrics} in {run.result.seconds:.1f} s")
    return 0


def cmd_run(args: argparse.Namespace) -> int:
    from kdcache.experiment import run_pipeline

    run_pipeline(_pipeline(args), progress=not args.quiet)
    return 0


def cmd_inspect(args: argparse.Namespace) -> int:
    from kdcache.store import open_cache
    from kdcache.summary import print_store

    print_store(open_cache(args.store))
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    from kdcache.hdf5 import export_hdf5

    path = export_hdf5(args.store, args.out, progress=not args.quiet)
    print(f"exported {args.store} to {path}")
    return 0


def cmd_import(args: argparse.Namespace) -> int:
    from kdcache.hdf5 import import_hdf5

    cache = import_hdf5(args.file, args.store, progress=not args.quiet)
    print(f"imported {args.file} into {cache.url}: {cache.num_samples} samples, teachers {cache.teachers}")
    return 0


def cmd_stats(args: argparse.Namespace) -> int:
    from kdcache.stats import report_stats

    report_stats(args.store, args.out, temperature=args.temperature, bins=args.bins, progress=not args.quiet)
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="kdcache", description="Knowledge distillation with cached teachers.")
    parser.add_argument("-v", "--verbose", action="store_true", help="log progress details")
    sub = parser.add_subparsers(dest="command", required=True)

    def pipeline_command(
        name: str, func: Callable[[argparse.Namespace], int], help_text: str
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

    precompute = pipeline_command(
        "precompute", cmd_precompute, "stage one: run the teacher once and write its targets to the store"
    )
    cluster = precompute.add_mutually_exclusive_group()
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
    train = pipeline_command("train", cmd_train, "stage two: train the student from the store")
    train.add_argument(
        "--variant", choices=["cached", "online", "scratch"], default="cached", help="where teacher targets come from"
    )
    pipeline_command("run", cmd_run, "teacher, stage one, and scratch / online / cached students, with a report")

    inspect = sub.add_parser("inspect", help="print a store's manifest in readable form")
    inspect.add_argument("store", help="store path or URL")
    inspect.set_defaults(func=cmd_inspect)

    def store_command(name: str, func: Callable[[argparse.Namespace], int], help_text: str) -> argparse.ArgumentParser:
        p = sub.add_parser(
            name, help=help_text, description=help_text, formatter_class=argparse.ArgumentDefaultsHelpFormatter
        )
        p.add_argument("--quiet", action="store_true", help="no progress bars")
        p.set_defaults(func=func)
        return p

    export = store_command("export", cmd_export, "write a complete store's arrays and manifest to a new HDF5 file")
    export.add_argument("store", help="store path or URL")
    export.add_argument("out", type=Path, help="HDF5 file to create")
    imp = store_command("import", cmd_import, "build a new store from an HDF5 file made by `kdcache export`")
    imp.add_argument("file", type=Path, help="HDF5 file made by `kdcache export`")
    imp.add_argument("store", help="store path or URL to create")
    stats = store_command(
        "stats", cmd_stats, "per-teacher accuracy, entropy, calibration (ECE, reliability PNG) and top-k mass"
    )
    stats.add_argument("store", help="store path or URL")
    stats.add_argument("--out", type=Path, default=Path("runs/stats"), help="folder for stats.json and reliability.png")
    stats.add_argument("--temperature", type=float, default=1.0, help="softmax temperature T of the probabilities")
    stats.add_argument("--bins", type=int, default=15, help="confidence bins of the calibration error")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.INFO if args.verbose else logging.WARNING, format="%(levelname)s %(name)s: %(message)s"
    )
    if not args.verbose:  # dask sets its loggers from its config when imported; cluster chatter is detail, like ours
        os.environ.setdefault("DASK_LOGGING__DISTRIBUTED", "warning")
    try:
        return args.func(args)
    except KdcacheError as exc:
        print(f"kdcache: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("kdcache: interrupted; committed shards are kept and a re-run resumes", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
