"""The commands that measure kdcache itself: ``fidelity`` (logits encodings) and ``bench`` (what caching buys)."""

from __future__ import annotations

import argparse
from pathlib import Path

from kdcache.errors import ConfigError


def fidelity(args: argparse.Namespace) -> int:
    if args.store:  # a language model's own store: its token targets against the live teacher
        return store_fidelity(args)
    if args.tokens:  # token targets: a tiny Llama at the full vocabulary, every top-k encoding
        from kdcache.tools.token_fidelity import report_token_fidelity

        print(report_token_fidelity(args.vocab, args.tokens, args.k, progress=not args.quiet))
        return 0
    from kdcache.tools.fidelity import report_fidelity

    report_fidelity(args.classes, args.out or Path("runs/fidelity"), progress=not args.quiet)
    return 0


def store_fidelity(args: argparse.Namespace) -> int:
    """``fidelity --store``: the rich tables of :func:`~kdcache.tools.lm_fidelity.pipeline_store_fidelity`, and its
    JSON and markdown under ``--out`` when given."""
    from kdcache.pipeline import distill_pipeline, load_pipeline
    from kdcache.tables import render_table
    from kdcache.tools.lm_fidelity import fidelity_tables, pipeline_store_fidelity, report_summary, write_report

    if not args.pipeline:
        raise ConfigError("fidelity --store needs --pipeline P.yaml (the teacher, student and data of the store)")
    cfg = distill_pipeline(load_pipeline(args.pipeline, args.set), f"fidelity --store ({args.pipeline})")
    report = pipeline_store_fidelity(cfg, args.store, sequences=args.sequences, seed=args.seed, progress=not args.quiet)
    print(report_summary(report))
    for title, header, rows in fidelity_tables(report):
        render_table(title, header, rows)
    if args.out:
        write_report(report, args.out)
        print(f"wrote {args.out / 'token_fidelity.json'} and {args.out / 'token_fidelity.md'}")
    return 0


def bench(args: argparse.Namespace) -> int:
    from kdcache.tools.bench import BenchSettings, run_bench

    preset = BenchSettings.quick_preset if args.quick else BenchSettings.full
    report = run_bench(args.out, preset(threads=args.threads, device=args.device), progress=not args.quiet)
    missed = [g for g in report["goals"] if not g["met"]]
    print((args.out / "bench.md").read_text())
    print(
        f"wrote {args.out / 'bench.json'} and {args.out / 'bench.md'}: {len(report['goals']) - len(missed)} of "
        f"{len(report['goals'])} goals met in {report['seconds']:.0f} s"
    )
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    """Add the measurement commands to the ``kdcache`` parser."""
    defaults = argparse.ArgumentDefaultsHelpFormatter
    p = sub.add_parser(
        "fidelity", help="bytes and KL of each logits encoding, measured on real stores", formatter_class=defaults
    )
    p.add_argument("--classes", type=int, nargs="+", default=[10, 100, 1000], help="teacher widths to measure")
    p.add_argument(
        "--out",
        type=Path,
        default=None,
        help="where stores and tables go (default runs/fidelity); --store: JSON and markdown, if given",
    )
    p.add_argument("--tokens", type=int, default=0, help="measure top-k token encodings over this many tokens")
    p.add_argument("--vocab", type=int, default=128_256, help="--tokens: the teacher's vocabulary")
    p.add_argument("--k", type=int, default=32, help="--tokens: tokens kept per position")
    p.add_argument("--store", help="a language model's store: measure its token targets (needs --pipeline)")
    p.add_argument("--pipeline", help="--store: the pipeline YAML that built it (teacher, student, data)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="--store: override a pipeline value")
    p.add_argument("--sequences", type=int, default=64, help="--store: random sequences of the store to measure")
    p.add_argument("--seed", type=int, default=0, help="--store: which random sequences")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.set_defaults(func=fidelity)
    p = sub.add_parser(
        "bench",
        formatter_class=defaults,
        help="measure what caching costs and saves here: step time, stage-one and read throughput, bytes, memory",
    )
    p.add_argument("--quick", action="store_true", help="small sizes (under 3 minutes on 2 cores)")
    p.add_argument("--out", type=Path, default=Path("runs/bench"), help="where bench.json and bench.md go")
    p.add_argument(
        "--threads", type=int, default=None, help="torch compute threads (default: CPU cores - 1, at least 1)"
    )
    p.add_argument("--device", default="cpu", help="device the students and teachers run on (cpu, cuda)")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.set_defaults(func=bench)
