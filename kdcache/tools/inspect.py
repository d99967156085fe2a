"""Readable summaries of a store (``kdcache inspect``): tables, and the storage breakdown as a PNG."""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
from rich.console import Console
from rich.table import Table

from kdcache.store import StoreReader, read_manifest
from kdcache.store.layout import VIEW_PARAMS
from kdcache.store.location import StoreLocation
from kdcache.tables import console as default_console

if TYPE_CHECKING:  # the recompute check needs torch; printing a store's manifest must not
    from kdcache.tools.recompute import FidelityReport


def print_store(cache: StoreReader, console: Console | None = None) -> None:
    """Status, fingerprints, teachers and every target array with its layout and size."""
    console = console or default_console()
    m = cache.manifest
    console.print(f"[bold]{cache.url}[/bold]  format v{m.format_version}  status: [bold]{m.status}[/bold]")
    console.print(
        f"samples: {m.num_samples:,} in {m.num_shards()} shard(s) of {m.shard_samples}  views: {m.views.get('count')} "
        f"(seed {m.views.get('seed')}, digest {m.views['digest'][:12]})"
    )
    for key in ("pipeline", "eval"):
        steps = m.views.get("transform", {}).get(key) or []
        if steps:
            names = " → ".join(str(step.get("class") or step.get("function") or step) for step in steps)
            console.print(f"{key} ({'views ≥ 1' if key == 'pipeline' else 'view 0'}): {names}")
    augment = m.views.get("transform", {}).get("augment")
    if augment:
        ops = " → ".join(f"{op['op']}({', '.join(f'{k}={v}' for k, v in op.items() if k != 'op')})" for op in augment)
        console.print(f"augment (views ≥ 1; view 0 is the eval view): {ops}")
        record = m.samples.arrays.get(VIEW_PARAMS)
        if record is not None:
            size = cache.array_bytes(VIEW_PARAMS)
            console.print(f"{VIEW_PARAMS}: {tuple(record.shape)} {record.dtype}, {size:,} bytes on disk")
        console.print(f"{VIEW_PARAMS} columns: {', '.join(m.views['transform'].get('params', []))}")
    ds = m.dataset
    console.print(
        f"dataset: {ds.get('source')}  length {ds.get('length')}  classes {ds.get('num_classes')}  digest {ds['digest'][:12]}"
    )
    console.print("libraries: " + ", ".join(f"{k} {v}" for k, v in sorted(m.library.items())))
    console.print(_targets_table(cache))
    for name, teacher in sorted(m.teachers.items()):
        acc = "—" if teacher.accuracy is None else f"{100 * teacher.accuracy:.2f}%"
        spec = teacher.fingerprint.get("spec", {})
        console.print(
            f"teacher [bold]{name}[/bold]: {teacher.status}, {len(teacher.shards)}/{m.num_shards()} shards, "
            f"accuracy on cached samples {acc}, spec {spec}, fingerprint {teacher.fingerprint['digest'][:12]}"
        )
    labels = cache.labels()
    if labels is not None:
        counts = np.bincount(labels).tolist()
        classes = m.dataset.get("class_names")
        if classes and len(classes) >= len(counts):
            console.print("samples per class: " + ", ".join(f"{n} {c}" for n, c in zip(classes, counts, strict=False)))
        else:
            console.print(f"labels: {counts} per class")


def _targets_table(cache: StoreReader) -> Table:
    """Every target array of every teacher: shape, dtype, parameters, chunking, codec and bytes on disk."""
    m = cache.manifest
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
                size = cache.array_bytes(rec.path)
                params = " ".join(f"{k}={v}" for k, v in sorted(target.params.items()))
                table.add_row(
                    name,
                    target_name,
                    rel,
                    str(tuple(rec.shape)),
                    rec.dtype,
                    params,
                    str(rec.chunks[0]),
                    str(rec.shards[0]),
                    rec.compressor,
                    f"{size:,}",
                    f"{size / max(m.num_samples, 1):.1f}",
                )
    return table


def print_scrub(url: str, console: Console | None = None) -> bool:
    """Run the full scrub (:func:`kdcache.store.scrub`: metadata, records, size and SHA-256 of every committed shard
    file) and the check of stored values against their targets' parameters (:mod:`kdcache.tools.values`), and print
    every finding; True when nothing is wrong."""
    from kdcache.tools.values import verify_problems

    console = console or default_console()
    problems = verify_problems(url)
    files = sum(len(c.files) for c in read_manifest(StoreLocation(url)).all_commits())
    for problem in problems:
        console.print(f"[red]damaged[/red] {problem}", soft_wrap=True)
    verdict = "no problems" if not problems else f"{len(problems)} problem(s)"
    console.print(
        f"{url}: {files} committed shard file(s) checked (metadata, records, size, SHA-256 and stored values): {verdict}"
    )
    return not problems


def print_fidelity(report: FidelityReport, console: Console | None = None) -> None:
    """The per-target table of ``kdcache verify --recompute`` and the verdict."""
    console = console or default_console()
    tol = report.tolerance
    console.print(
        f"{report.store}: teacher {report.teacher!r} re-run on {report.pairs} (sample, view) pairs", soft_wrap=True
    )
    table = Table()
    columns = (
        "target",
        "stored as",
        "pairs",
        "max abs error",
        "encoding error",
        "lse error",
        "ids agree",
        "min cosine",
        "exact pairs",
        "result",
    )
    for column in columns:
        table.add_column(column)
    for name, t in sorted(report.targets.items()):
        table.add_row(
            name,
            t.kind,
            str(t.pairs),
            f"{t.max_abs_error:.3g}",
            _figure(t.encoding_error, ".3g"),
            _figure(t.lse_error, ".3g"),
            _figure(t.ids_agreement, ".4%"),
            _figure(t.min_cosine, ".6f"),
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
        f"view inputs: {report.pairs - report.input_mismatches}/{report.pairs} equal to the inputs stage one gave the "
        "teacher (samples/view_digest)"
    )
    console.print(
        f"tolerance: |cached - live| <= {tol.atol:g} + {tol.rtol:g}·|live| + one storage rounding per value, "
        f"cosine >= {tol.min_cosine:g} per dense pair, top-k ids in the live top k up to ties, sampled positions "
        f"differing <= {tol.sampled_mismatch:g}: {'PASSED' if report.passed else 'FAILED'}",
        soft_wrap=True,
    )


def _figure(value: float | None, spec: str) -> str:
    """A report figure, or a dash where it does not apply to the target's kind."""
    return "—" if value is None else format(value, spec)
