"""``kdcache`` command line: parse, make one library call, exit. ``kdcache COMMAND --help`` for each command."""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Callable
from pathlib import Path

from kdcache.errors import ConfigError, KdcacheError


def _pipeline(args: argparse.Namespace):  # noqa: ANN202
    from kdcache.config import load_pipeline

    cfg = load_pipeline(args.pipeline, args.set)
    if cfg.method != "distill" and args.command != "run":
        raise ConfigError(
            f"{args.pipeline} is a method {cfg.method!r} pipeline, which only `kdcache run` runs (its stages depend "
            f"on each other); `kdcache {args.command}` takes method distill pipelines"
        )
    return cfg


def cmd_precompute(args: argparse.Namespace) -> int:
    from kdcache.experiment import rate_text, run_precompute

    report = run_precompute(
        _pipeline(args),
        progress=not args.quiet,
        workers=args.workers,
        scheduler=args.scheduler,
        break_lock=args.break_lock,
    )
    acc = "—" if report.accuracy is None else f"{100 * report.accuracy:.2f}%"
    print(
        f"{report.store}: teacher {report.teacher!r} — {report.shards_written} shard(s) written, "
        f"{report.shards_skipped} already committed, {rate_text(report)} samples/s, "
        f"{'complete' if report.complete else 'incomplete'}, accuracy on cached samples {acc}"
    )
    return 0


def cmd_train(args: argparse.Namespace) -> int:
    from kdcache.experiment import train_student
    from kdcache.world import World

    world = World.from_env()  # the one place that reads torchrun's RANK / WORLD_SIZE / LOCAL_RANK
    run = train_student(_pipeline(args), args.variant, progress=not args.quiet, world=world, resume=args.resume)
    if world.is_main:
        metrics = ", ".join(f"{k} {100 * v:.2f}%" for k, v in run.metrics.items())
        print(f"student ({args.variant}): {metrics} in {run.result.seconds:.1f} s")
    return 0


def cmd_run(args: argparse.Namespace) -> int:
    from kdcache.comparison import run_pipeline

    run_pipeline(_pipeline(args), progress=not args.quiet)
    return 0


def cmd_plan(args: argparse.Namespace) -> int:
    from kdcache.experiment import plan_storage
    from kdcache.report import render_table

    rows = plan_storage(_pipeline(args))
    table = [
        [
            r["target"],
            r["array"],
            str(tuple(r["shape"])),
            r["dtype"],
            f"{r['bytes_per_sample']:,}",
            f"{r['total_bytes'] / 1e6:,.2f}",
            str(r["chunk_samples"]),
            str(r["shard_samples"]),
            r["compressor"],
        ]
        for r in rows
    ]
    total = sum(r["total_bytes"] for r in rows)
    per_sample = sum(r["bytes_per_sample"] for r in rows)
    table.append(["total", "", "", "", f"{per_sample:,}", f"{total / 1e6:,.2f}", "", "", ""])
    header = ["target", "array", "shape", "dtype", "bytes/sample", "MB (uncompressed)", "chunk", "shard", "codec"]
    render_table("storage plan", header, table)
    return 0


def cmd_fidelity(args: argparse.Namespace) -> int:
    from kdcache.fidelity import fidelity_table
    from kdcache.report import markdown_table, render_table, write_json

    rows = fidelity_table(args.classes, args.out, progress=not args.quiet)
    header = [
        "classes",
        "encoding",
        "bytes/sample (raw)",
        "bytes/sample (disk)",
        "KL T=1",
        "KL T=4",
        "mass kept T=1",
        "mass kept T=4",
    ]
    table = [
        [
            str(r["classes"]),
            r["encoding"],
            str(r["raw_bytes_per_sample"]),
            f"{r['bytes_per_sample']:.1f}",
            f"{r['kl_T1']:.2e}",
            f"{r['kl_T4']:.2e}",
            _pct(r.get("mass_T1")),
            _pct(r.get("mass_T4")),
        ]
        for r in rows
    ]
    render_table("logits encodings: size and fidelity", header, table)
    sources = sorted({f"{r['classes']} classes: {r['source']}" for r in rows})
    (args.out / "fidelity.md").write_text(
        markdown_table(header, table) + "\n" + "\n".join(f"* {s}" for s in sources) + "\n"
    )
    write_json(args.out / "fidelity.json", rows)
    return 0


def _pct(value: float | None) -> str:
    return "—" if value is None else f"{100 * value:.1f}%"


def cmd_bench(args: argparse.Namespace) -> int:
    from kdcache.bench import BenchSettings, run_bench

    preset = BenchSettings.quick_preset if args.quick else BenchSettings.full
    report = run_bench(args.out, preset(threads=args.threads, device=args.device), progress=not args.quiet)
    missed = [g for g in report["goals"] if not g["met"]]
    print((args.out / "bench.md").read_text())
    print(
        f"wrote {args.out / 'bench.json'} and {args.out / 'bench.md'}: {len(report['goals']) - len(missed)} of "
        f"{len(report['goals'])} goals met in {report['seconds']:.0f} s"
    )
    return 0


def cmd_inspect(args: argparse.Namespace) -> int:
    from kdcache.store import open_cache
    from kdcache.summary import plot_storage, print_store

    cache = open_cache(args.store)
    print_store(cache)
    if args.png is not None:
        print(f"wrote {plot_storage(cache, args.png)} (bytes per sample by teacher and array)")
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


def cmd_verify(args: argparse.Namespace) -> int:
    if args.recompute is None:
        from kdcache.summary import print_scrub

        return 0 if print_scrub(args.store) else 1
    from kdcache.config import load_pipeline
    from kdcache.recompute import Tolerance, recompute_pipeline_store
    from kdcache.summary import print_fidelity

    report = recompute_pipeline_store(
        load_pipeline(args.pipeline, args.set),
        args.store,
        pairs=args.recompute,
        seed=args.seed,
        tolerance=Tolerance(atol=args.atol, rtol=args.rtol, min_cosine=args.min_cosine),
        progress=not args.quiet,
    )
    print_fidelity(report)
    return 0 if report.passed else 1


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
    precompute.add_argument(
        "--break-lock",
        action="store_true",
        help="take over the store's writer lock left by a writer that died (never while it still runs)",
    )
    train = pipeline_command(
        "train", cmd_train, "stage two: train the student from the store (under torchrun: DDP, one rank per process)"
    )
    train.add_argument(
        "--variant",
        default="cached",
        help="a variant of the pipeline's compare list, or scratch / online / cached (the target source)",
    )
    train.add_argument(
        "--resume",
        action="store_true",
        help="continue from <output_dir>/checkpoints/student-<variant>.state.safetensors (from the start if absent)",
    )
    pipeline_command("plan", cmd_plan, "bytes per sample and store size of each target, before any teacher runs")
    pipeline_command(
        "run", cmd_run, "teacher, stage one and the compared students, or a scheme (method: lwf, rocket, selfkd)"
    )

    fidelity = sub.add_parser(
        "fidelity",
        help="bytes and KL of each logits encoding, measured on real stores",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    fidelity.add_argument("--classes", type=int, nargs="+", default=[10, 100, 1000], help="teacher widths to measure")
    fidelity.add_argument("--out", type=Path, default=Path("runs/fidelity"), help="where stores and tables go")
    fidelity.add_argument("--quiet", action="store_true", help="no progress bars")
    fidelity.set_defaults(func=cmd_fidelity)

    bench = sub.add_parser(
        "bench",
        help="measure what caching costs and saves here: step time, stage-one and read throughput, bytes, memory",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    bench.add_argument("--quick", action="store_true", help="small sizes (under 3 minutes on 2 cores)")
    bench.add_argument("--out", type=Path, default=Path("runs/bench"), help="where bench.json and bench.md go")
    bench.add_argument(
        "--threads", type=int, default=None, help="torch compute threads (default: CPU cores - 1, at least 1)"
    )
    bench.add_argument("--device", default="cpu", help="device the students and teachers run on (cpu, cuda)")
    bench.add_argument("--quiet", action="store_true", help="no progress bars")
    bench.set_defaults(func=cmd_bench)

    inspect = sub.add_parser("inspect", help="print a store's manifest in readable form")
    inspect.add_argument("store", help="store path or URL")
    inspect.add_argument("--png", type=Path, help="also plot the storage breakdown (bytes per sample) to this PNG")
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

    verify_help = (
        "check a store: without --recompute, the size and SHA-256 of every committed shard file; with --recompute N, "
        "re-run the pipeline's teacher on N random (sample, view) pairs and compare with the cache. Exits 1 when a "
        "check fails"
    )
    verify = sub.add_parser(
        "verify", help=verify_help, description=verify_help, formatter_class=argparse.ArgumentDefaultsHelpFormatter
    )
    verify.add_argument("store", help="store path or URL")
    verify.add_argument(
        "--recompute", type=int, metavar="N", help="re-run the teacher on N random (sample, view) pairs"
    )
    verify.add_argument(
        "--pipeline", help="pipeline YAML giving the teacher, dataset and views (needed by --recompute)"
    )
    verify.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a pipeline value")
    verify.add_argument("--seed", type=int, default=0, help="seed of the random choice of pairs")
    verify.add_argument("--atol", type=float, default=1e-3, help="absolute tolerance per element")
    verify.add_argument("--rtol", type=float, default=1e-2, help="relative tolerance per element")
    verify.add_argument("--min-cosine", type=float, default=0.999, help="lowest cosine similarity a pair may have")
    verify.add_argument("--quiet", action="store_true", help="no progress bar")
    verify.set_defaults(func=cmd_verify)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if getattr(args, "recompute", None) is not None and not args.pipeline:
        parser.error("verify --recompute needs --pipeline P.yaml (the teacher, dataset and views to re-run)")
    if getattr(args, "recompute", None) is not None and args.recompute < 1:
        parser.error(f"verify --recompute needs a positive number of pairs, got {args.recompute}")
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
