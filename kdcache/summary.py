"""Readable summaries of a store (``kdcache inspect``)."""

from __future__ import annotations

import numpy as np
from rich.console import Console
from rich.table import Table

from kdcache.report import console as default_console
from kdcache.store.reader import Cache


def array_bytes(cache: Cache, path: str) -> int:
    """Bytes on disk of one array's committed shards."""
    return sum(c.files[path].nbytes for c in cache.manifest.all_commits() if path in c.files)


def print_store(cache: Cache, console: Console | None = None) -> None:
    """Status, fingerprints, teachers and every target array with its layout and size."""
    console = console or default_console()
    m = cache.manifest
    console.print(f"[bold]{cache.url}[/bold]  format v{m.format_version}  status: [bold]{m.status}[/bold]")
    console.print(
        f"samples: {m.num_samples:,} in {m.num_shards()} shard(s) of {m.shard_samples}  views: {m.views.get('count')} "
        f"(seed {m.views.get('seed')}, digest {m.views['digest'][:12]})"
    )
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
