"""The commands that take a store: ``inspect``, ``verify``, ``export``, ``import`` and ``stats``.

Each command imports what it runs when it runs: ``inspect`` reads a store with zarr and numpy alone, and ``verify``
(without ``--recompute``) checks the stored values with the targets' own rules, whose modules import torch only when
they encode or decode (:class:`kdcache.registry.LazyModule`); neither imports torch (tests/test_front_door.py holds
both). ``verify --recompute`` runs the teacher, so it does.
"""

from __future__ import annotations

import argparse
from pathlib import Path

VERIFY_HELP = (
    "check a store: without --recompute, its metadata and the size and SHA-256 of every committed shard file; with "
    "--recompute N, re-run the pipeline's teacher on N random (sample, view) pairs and compare every target (or those "
    "of --targets) with the cache: dense, int8, top-k with its tail, sampled tokens. Exits 1 when a check fails"
)


UPGRADE_HELP = (
    "upgrade a format-1 or format-2 store in place to format 3 (per-sample and per-view content digests, pinned "
    "metadata, view steps identified by content): checks the store, that the pipeline's training split is the data "
    "it was built from and that its views are the pipeline's; the teacher is not needed"
)


def inspect(args: argparse.Namespace) -> int:
    from kdcache.store import open_store
    from kdcache.tools.inspect import print_store

    cache = open_store(args.store)
    print_store(cache)
    if args.png is not None:
        from kdcache.pipeline.report import plot_storage

        print(f"wrote {plot_storage(cache, args.png)} (bytes per sample by teacher and array)")
    return 0


def export(args: argparse.Namespace) -> int:
    from kdcache.tools.transfer import export_hdf5

    path = export_hdf5(args.store, args.out, progress=not args.quiet)
    print(f"exported {args.store} to {path}")
    return 0


def import_(args: argparse.Namespace) -> int:
    from kdcache.tools.transfer import import_hdf5

    cache = import_hdf5(args.file, args.store, progress=not args.quiet)
    print(f"imported {args.file} into {cache.url}: {cache.num_samples} samples, teachers {cache.teachers}")
    return 0


def stats(args: argparse.Namespace) -> int:
    from kdcache.tools.stats import report_stats

    report_stats(args.store, args.out, temperature=args.temperature, bins=args.bins, progress=not args.quiet)
    return 0


def verify(args: argparse.Namespace) -> int:
    from kdcache.tools.inspect import print_fidelity, print_scrub

    if args.recompute is None:
        return 0 if print_scrub(args.store) else 1
    from kdcache.pipeline import distill_pipeline, load_pipeline
    from kdcache.tools.recompute import Tolerance, recompute_pipeline_store

    report = recompute_pipeline_store(
        distill_pipeline(load_pipeline(args.pipeline, args.set), f"verify --recompute ({args.pipeline})"),
        args.store,
        pairs=args.recompute,
        seed=args.seed,
        tolerance=Tolerance(args.atol, args.rtol, args.min_cosine, args.max_sampled_mismatch),
        targets=args.targets,
        progress=not args.quiet,
    )
    print_fidelity(report)
    return 0 if report.passed else 1


def upgrade(args: argparse.Namespace) -> int:
    from kdcache.pipeline import load_pipeline
    from kdcache.pipeline.build import load_split, view_transform
    from kdcache.tools.upgrade import upgrade_store

    cfg = load_pipeline(args.pipeline, args.set)
    split = load_split(cfg, cfg.data.train_split)
    cache = upgrade_store(args.store, split, views=view_transform(cfg), progress=not args.quiet)
    views = cache.manifest.views.get("count", 1)
    print(
        f"upgraded {cache.url} to format {cache.manifest.format_version}: digests of {cache.num_samples} samples "
        f"and {cache.num_samples * views} views"
    )
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    """Add the store commands to the ``kdcache`` parser."""
    p = sub.add_parser("inspect", help="print a store's manifest in readable form")
    p.add_argument("store", help="store path or URL")
    p.add_argument("--png", type=Path, help="also plot the storage breakdown (bytes per sample) to this PNG")
    p.set_defaults(func=inspect)
    p = _store_parser(sub, "export", export, "write a complete store's arrays and manifest to a new HDF5 file")
    p.add_argument("store", help="store path or URL")
    p.add_argument("out", type=Path, help="HDF5 file to create")
    p = _store_parser(sub, "import", import_, "build a new store from an HDF5 file made by `kdcache export`")
    p.add_argument("file", type=Path, help="HDF5 file made by `kdcache export`")
    p.add_argument("store", help="store path or URL to create")
    p = _store_parser(
        sub, "stats", stats, "per-teacher accuracy, entropy, calibration (ECE, reliability PNG) and top-k mass"
    )
    p.add_argument("store", help="store path or URL")
    p.add_argument("--out", type=Path, default=Path("runs/stats"), help="folder for stats.json and reliability.png")
    p.add_argument("--temperature", type=float, default=1.0, help="softmax temperature T of the probabilities")
    p.add_argument("--bins", type=int, default=15, help="confidence bins of the calibration error")
    _add_verify(sub)
    p = _store_parser(sub, "upgrade", upgrade, UPGRADE_HELP)
    p.add_argument("store", help="store path or URL")
    p.add_argument("--pipeline", required=True, help="pipeline YAML whose data section is the store's dataset")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a pipeline value")


def _add_verify(sub: argparse._SubParsersAction) -> None:
    p = _store_parser(sub, "verify", verify, VERIFY_HELP)
    p.add_argument("store", help="store path or URL")
    p.add_argument("--recompute", type=int, metavar="N", help="re-run the teacher on N random (sample, view) pairs")
    p.add_argument("--pipeline", help="pipeline YAML giving the teacher, dataset and views (needed by --recompute)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a pipeline value")
    p.add_argument("--seed", type=int, default=0, help="seed of the random choice of pairs")
    p.add_argument("--atol", type=float, default=1e-3, help="absolute tolerance per element")
    p.add_argument("--rtol", type=float, default=1e-2, help="relative tolerance per element")
    p.add_argument("--min-cosine", type=float, default=0.999, help="lowest cosine similarity a dense pair may have")
    p.add_argument(
        "--max-sampled-mismatch",
        type=float,
        default=0.0,
        metavar="FRACTION",
        help="fraction of sampled-token positions whose re-drawn tokens may differ (0: the same machine "
        "draws the same tokens; raise it slightly only to compare across machines)",
    )
    p.add_argument("--targets", type=_names, metavar="A,B", help="check only these targets (default: every one)")


def _names(text: str) -> list[str]:
    """``a,b`` as a list of names (``--targets``)."""
    return [name.strip() for name in text.split(",") if name.strip()]


def _store_parser(sub: argparse._SubParsersAction, name: str, func, help_text: str) -> argparse.ArgumentParser:
    p = sub.add_parser(
        name, help=help_text, description=help_text, formatter_class=argparse.ArgumentDefaultsHelpFormatter
    )
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.set_defaults(func=func)
    return p


def check(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """Argument rules argparse cannot express: ``verify --recompute N`` needs a pipeline and a positive N."""
    if getattr(args, "recompute", None) is None:
        return
    if not args.pipeline:
        parser.error("verify --recompute needs --pipeline P.yaml (the teacher, dataset and views to re-run)")
    if args.recompute < 1:
        parser.error(f"verify --recompute needs a positive number of pairs, got {args.recompute}")
