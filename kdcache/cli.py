"""``kdcache`` command line: parse, make one library call, exit. ``kdcache COMMAND --help`` for each command."""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Callable

from kdcache.errors import KdcacheError


def _pipeline(args: argparse.Namespace):  # noqa: ANN202
    from kdcache.config import load_pipeline

    return load_pipeline(args.pipeline, args.set)


def cmd_precompute(args: argparse.Namespace) -> int:
    from kdcache.experiment import rate_text, run_precompute

    report = run_precompute(_pipeline(args), progress=not args.quiet)
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


def cmd_verify(args: argparse.Namespace) -> int:
    if args.recompute is None:
        from kdcache.store import open_cache
        from kdcache.summary import print_scrub

        return 0 if print_scrub(open_cache(args.store)) else 1
    from kdcache.config import load_pipeline
    from kdcache.fidelity import Tolerance, recompute_pipeline_store
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

    pipeline_command("precompute", cmd_precompute, "stage one: run the teacher once and write its targets to the store")
    train = pipeline_command("train", cmd_train, "stage two: train the student from the store")
    train.add_argument(
        "--variant", choices=["cached", "online", "scratch"], default="cached", help="where teacher targets come from"
    )
    pipeline_command("run", cmd_run, "teacher, stage one, and scratch / online / cached students, with a report")

    inspect = sub.add_parser("inspect", help="print a store's manifest in readable form")
    inspect.add_argument("store", help="store path or URL")
    inspect.set_defaults(func=cmd_inspect)

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
