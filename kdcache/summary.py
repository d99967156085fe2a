"""Readable summaries of a store (``kdcache inspect``): tables, and the storage breakdown as a PNG."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from rich.console import Console
from rich.table import Table

from kdcache.recompute import FidelityReport
from kdcache.report import console as default_console
from kdcache.store import read_manifest, scrub
from kdcache.store.layout import VIEW_PARAMS
from kdcache.store.location import StoreLocation
from kdcache.store.reader import Cache


def array_bytes(cache: Cache, path: str) -> int:
    """Bytes on disk of one array's committed shards."""
    return sum(c.files[path].nbytes for c in cache.manifest.all_commits() if path in c.files)


SHARED = "shared by all teachers"
OVERHEAD = "metadata, manifests, locks"


def storage_breakdown(cache: Cache) -> dict[str, dict[str, float]]:
    """Bytes per sample on disk: each teacher's arrays (``logits``, ``logits_topk/values``, ...), the arrays every teacher
    shares (labels, view parameters), and the rest of the store (zarr.json files, manifests), which the rows sum to.
    """
    m, n = cache.manifest, max(cache.num_samples, 1)
    rows: dict[str, dict[str, float]] = {}
    for name, teacher in sorted(m.teachers.items()):
        rows[name] = {
            rel: array_bytes(cache, rec.path) / n
            for target in teacher.targets.values()
            for rel, rec in sorted(target.arrays.items())
        }
    shared = {path: array_bytes(cache, path) / n for path in sorted(m.samples.arrays)}
    counted = sum(sum(row.values()) for row in rows.values()) + sum(shared.values())
    rows[SHARED] = {**shared, OVERHEAD: cache.location.disk_usage() / n - counted}
    return rows


def plot_storage(cache: Cache, path: Path) -> Path:
    """Horizontal stacked bars of :func:`storage_breakdown`, one bar per teacher and one for the shared part."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = storage_breakdown(cache)
    parts = sum(len(r) for r in rows.values())
    fig, ax = plt.subplots(figsize=(8, 1.6 + 0.5 * len(rows) + 0.18 * parts))
    colors = iter(plt.get_cmap("tab20").colors * 4)
    widest = 0.0
    for y, (row, sizes) in enumerate(rows.items()):
        left = 0.0
        for part, size in sizes.items():
            ax.barh(y, size, left=left, color=next(colors), edgecolor="black", linewidth=0.4, label=f"{row}: {part}")
            left += size
        ax.annotate(f"{left:,.1f} B", (left, y), xytext=(4, 0), textcoords="offset points", va="center", fontsize=8)
        widest = max(widest, left)
    ax.set_xlim(0, 1.18 * widest)  # room for the totals
    ax.set_yticks(range(len(rows)), list(rows))
    ax.invert_yaxis()
    ax.set_xlabel("bytes on disk per sample")
    total = round(sum(sum(r.values()) for r in rows.values()) * max(cache.num_samples, 1))  # the bars sum to the store
    ax.set_title(f"{cache.url}\n{total:,} bytes, {cache.num_samples:,} samples", fontsize=9)
    ax.legend(fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.25 - 0.1 / len(rows)), ncol=2)
    ax.grid(axis="x", alpha=0.3)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120, bbox_inches="tight")
    plt.close(fig)
    return path


def print_store(cache: Cache, console: Console | None = None) -> None:
    """Status, fingerprints, teachers and every target array with its layout and size."""
    console = console or default_console()
    m = cache.manifest
    console.print(f"[bold]{cache.url}[/bold]  format v{m.format_version}  status: [bold]{m.status}[/bold]")
    console.print(
        f"samples: {m.num_samples:,} in {m.num_shards()} shard(s) of {m.shard_samples}  views: {m.views.get('count')} "
        f"(seed {m.views.get('seed')}, digest {m.views['digest'][:12]})"
    )
    augment = m.views.get("transform", {}).get("augment")
    if augment:
        ops = " → ".join(f"{op['op']}({', '.join(f'{k}={v}' for k, v in op.items() if k != 'op')})" for op in augment)
        console.print(f"augment (views ≥ 1; view 0 is the eval view): {ops}")
        record = m.samples.arrays.get(VIEW_PARAMS)
        if record is not None:
            size = array_bytes(cache, VIEW_PARAMS)
            console.print(f"{VIEW_PARAMS}: {tuple(record.shape)} {record.dtype}, {size:,} bytes on disk")
        console.print(f"{VIEW_PARAMS} columns: {', '.join(m.views['transform'].get('params', []))}")
    ds = m.dataset
    console.print(
        f"dataset: {ds.get('source')}  length {ds.get('length')}  classes {ds.get('num_classes')}  digest {ds['digest'][:12]}"
    )
    console.print("libraries: " + ", ".join(f"{k} {v}" for k, v in sorted(m.library.items())))
    table = Table(title="targets")
    for column in (
        "teacher",
        "target",
        "array",
        "shape",
        "dtype",
        "params",
        "chunk",
        "shard",
        "codec",
        "bytes",
        "B/sample",
    ):
        table.add_column(column)
    for name, teacher in sorted(m.teachers.items()):
        for target_name, target in sorted(teacher.targets.items()):
            for rel, rec in sorted(target.arrays.items()):
                size = array_bytes(cache, rec.path)
                table.add_row(
                    name,
                    target_name,
                    rel,
                    str(tuple(rec.shape)),
                    rec.dtype,
                    " ".join(f"{k}={v}" for k, v in sorted(target.params.items())),
                    str(rec.chunks[0]),
                    str(rec.shards[0]),
                    rec.compressor,
                    f"{size:,}",
                    f"{size / max(m.num_samples, 1):.1f}",
                )
    console.print(table)
    for name, teacher in sorted(m.teachers.items()):
        acc = "—" if teacher.accuracy is None else f"{100 * teacher.accuracy:.2f}%"
        spec = teacher.fingerprint.get("spec", {})
        console.print(
            f"teacher [bold]{name}[/bold]: {teacher.status}, {len(teacher.shards)}/{m.num_shards()} shards, "
            f"accuracy on cached samples {acc}, spec {spec}, fingerprint {teacher.fingerprint['digest'][:12]}"
        )
    labels = cache.labels()
    if labels is not None:
        console.print(f"labels: {np.bincount(labels).tolist()} per class")


def print_scrub(url: str, console: Console | None = None) -> bool:
    """Run the full scrub (:func:`kdcache.store.scrub`: metadata, size and SHA-256 of every committed shard file)
    and print every finding; True when nothing is wrong."""
    console = console or default_console()
    problems = scrub(url)
    files = sum(len(c.files) for c in read_manifest(StoreLocation(url)).all_commits())
    for problem in problems:
        console.print(f"[red]damaged[/red] {problem}", soft_wrap=True)
    verdict = "no problems" if not problems else f"{len(problems)} problem(s)"
    console.print(f"{url}: {files} committed shard file(s) checked (metadata, size and SHA-256): {verdict}")
    return not problems


def print_fidelity(report: FidelityReport, console: Console | None = None) -> None:
    """The per-target table of ``kdcache verify --recompute`` and the verdict."""
    console = console or default_console()
    tol = report.tolerance
    console.print(
        f"{report.store}: teacher {report.teacher!r} re-run on {report.pairs} (sample, view) pairs", soft_wrap=True
    )
    table = Table()
    for column in ("target", "max abs error", "encoding error", "min cosine", "mean cosine", "exact pairs", "result"):
        table.add_column(column)
    for name, t in sorted(report.targets.items()):
        table.add_row(
            name,
            f"{t.max_abs_error:.3g}",
            f"{t.encoding_error:.3g}",
            f"{t.min_cosine:.6f}",
            f"{t.mean_cosine:.6f}",
            f"{t.exact}/{t.pairs}",
            "pass" if t.passed(tol) else "FAIL",
        )
    console.print(table)
    fingerprint = {None: "not compared", True: "matches the store", False: "DIFFERS from the store's"}
    console.print(f"teacher fingerprint: {fingerprint[report.fingerprint_matches]}")
    if report.params_mismatches is not None:
        console.print(
            f"view parameters: {report.pairs - report.params_mismatches}/{report.pairs} identical to views/params"
        )
    console.print(
        f"tolerance: |cached - live| <= {tol.atol:g} + {tol.rtol:g}·|live| per element, cosine >= {tol.min_cosine:g} "
        f"per pair: {'PASSED' if report.passed else 'FAILED'}"
    )
