"""Figure 2: stage-one throughput against bare teacher inference over the same data and batches.

``bare`` runs only what any inference loop must: fetch a batch, apply the views, run the teacher (no grad). Each
stage-one variant is a complete :func:`kdcache.precompute` into a fresh store with one target kind, so the
difference is everything caching adds: layer capture and extraction on the teacher's thread, and on the background
writer thread the finiteness/overflow checks, encodings, digests and shard commits (shard bytes, SHA-256, commit
record), competing for the same cores.

Throughput is the library's own figure (``PrecomputeReport.samples_per_second``: first shard to committed
manifest); store creation and the teacher fingerprint are reported apart as ``setup``. Each run also records where
its time went (:func:`call_spans`): the teacher's thread (views and forward passes), the writer thread (checks,
encodings and digests of each batch; shard commits) and the manifest. What follows the last forward pass (the last
batches' encodings, the last shard's commit, the manifest) cannot overlap any compute, so each run is sized to
several shards and that tail is reported separately.
"""

from __future__ import annotations

import shutil
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from kdcache.precompute import PrecomputeReport, TeacherRun, precompute
from kdcache.precompute.fill import ShardFill
from kdcache.store import StoreBuilder, open_store
from kdcache.targets import Target
from kdcache.tools.bench.rounds import Samples, interleave, spread
from kdcache.tools.bench.settings import BenchSettings
from kdcache.tools.bench.workloads import TEACHER, Workload

Span = tuple[str, float, float]


def write_store(
    w: Workload, path: Path, targets: list[Target], *, batch_size: int, shard_samples: int | None, device: str
) -> PrecomputeReport:
    """Stage one of workload ``w`` into a new store at ``path`` (its teacher named :data:`TEACHER`)."""
    shutil.rmtree(path, ignore_errors=True)
    return precompute(
        w.make_teacher(),
        w.train,
        str(path),
        targets=targets,
        views=w.views,
        num_classes=w.setup.num_classes,
        teacher_name=TEACHER,
        batch_size=batch_size,
        shard_samples=shard_samples,
        device=device,
        progress=False,
    )


@contextmanager
def call_spans(methods: dict[str, tuple[type, str]]) -> Iterator[list[Span]]:
    """Record ``(label, start, end)`` of every call of each ``(class, method name)`` in ``methods`` while active,
    whichever thread makes it: where a precompute run spends its time. precompute builds its objects internally,
    so the methods are wrapped on their classes and restored on exit."""
    spans: list[Span] = []
    originals = {label: getattr(cls, name) for label, (cls, name) in methods.items()}

    def wrapped(label: str) -> Any:
        original = originals[label]

        def call(*args: Any, **kwargs: Any) -> Any:
            start = time.perf_counter()
            try:
                return original(*args, **kwargs)
            finally:
                spans.append((label, start, time.perf_counter()))

        return call

    for label, (cls, name) in methods.items():
        setattr(cls, name, wrapped(label))
    try:
        yield spans
    finally:
        for label, (cls, name) in methods.items():
            setattr(cls, name, originals[label])


STAGE_ONE_PARTS = {
    "views + forward (teacher's thread)": (TeacherRun, "_forward"),
    "checks + encodings + digests (writer)": (ShardFill, "add"),
    "shard commits (writer)": (StoreBuilder, "commit"),
    "manifest": (StoreBuilder, "finalize"),
}
"""The parts of a precompute run that :func:`call_spans` times: the teacher's thread's batches, the writer thread's
per-batch work and shard commits, and the final publish."""


def part_seconds(spans: list[Span]) -> dict[str, float]:
    """Total seconds of each part of :data:`STAGE_ONE_PARTS` in ``spans``."""
    return {label: sum(e - s for name, s, e in spans if name == label) for label in STAGE_ONE_PARTS}


def measure_stage_one(
    w: Workload,
    kinds: dict[str, list[Target]],
    workdir: Path,
    settings: BenchSettings,
    *,
    batch_size: int,
    shard_samples: int | None,
    rounds: int,
    progress: bool = True,
) -> dict[str, Any]:
    """Bare inference vs precompute of each target kind in ``kinds``; ratios paired per round."""
    device = torch.device(settings.device)
    teacher = w.make_teacher().eval().to(device)
    details: dict[str, list[dict[str, float]]] = {kind: [] for kind in kinds}

    def cached(kind: str) -> float:
        path = workdir / f"stage1-{w.name}-{uuid.uuid4().hex[:8]}.zarr"
        run = _stage_one_run(w, kinds[kind], path, batch_size=batch_size, shard_samples=shard_samples, device=device)
        details[kind].append(run)
        return run["seconds"]

    variants = {"bare inference": lambda: _bare_inference(teacher, w, batch_size, device)}
    variants |= {kind: partial(cached, kind) for kind in kinds}
    samples = interleave(variants, rounds=rounds, warmup=settings.warmup, desc=f"fig 2 {w.name}", progress=progress)
    n = len(w.train)
    return {
        "workload": w.label,
        "samples": n,
        "batch_size": batch_size,
        "bare_samples_per_second": spread([n / s for s in samples.values["bare inference"]]),
        "kinds": {kind: _kind_summary(samples, kind, details[kind][-rounds:], n) for kind in kinds},
    }


def _stage_one_run(
    w: Workload, targets: list[Target], path: Path, *, batch_size: int, shard_samples: int | None, device: torch.device
) -> dict[str, float]:
    """One precompute into a fresh store at ``path`` (removed after): its timings, writer activity and bytes."""
    with call_spans(STAGE_ONE_PARTS) as spans:
        start = time.perf_counter()
        report = write_store(w, path, targets, batch_size=batch_size, shard_samples=shard_samples, device=str(device))
        end = time.perf_counter()
    cache = open_store(str(path))
    arrays = [a.path for t in cache.teacher(TEACHER).targets.values() for a in t.arrays.values()]
    parts = part_seconds(spans)
    last = max(e for name, _, e in spans if name == "views + forward (teacher's thread)")
    run = {
        "seconds": report.seconds,
        "setup_seconds": end - start - report.seconds,
        "writer_busy_seconds": parts["checks + encodings + digests (writer)"] + parts["shard commits (writer)"],
        "teacher_thread_seconds": parts["views + forward (teacher's thread)"],
        "tail_seconds": end - last,
        "shards": report.shards_written,
        "disk_bytes_per_sample": sum(cache.array_bytes(p) for p in arrays) / len(w.train),
    }
    shutil.rmtree(path, ignore_errors=True)
    return run


def _kind_summary(samples: Samples, kind: str, runs: list[dict[str, float]], n: int) -> dict[str, Any]:
    """Throughput of one target kind, its paired ratio to bare inference (with and without the final shard's
    commit), and the writer's activity over the recorded rounds."""
    bare = samples.values["bare inference"]
    tail_free = [b / (d["seconds"] - d["tail_seconds"]) for d, b in zip(runs, bare, strict=True)]
    return {
        "samples_per_second": spread([n / s for s in samples.values[kind]]),
        "ratio_to_bare": samples.ratio("bare inference", kind),  # throughput ratio = inverse time ratio
        "ratio_to_bare_without_tail": spread(tail_free),
        "shards": runs[0]["shards"],
        "disk_bytes_per_sample": runs[0]["disk_bytes_per_sample"],
        **{
            key: spread([d[key] for d in runs])
            for key in ("seconds", "setup_seconds", "writer_busy_seconds", "teacher_thread_seconds", "tail_seconds")
        },
    }


@torch.no_grad()
def _bare_inference(teacher: nn.Module, w: Workload, batch_size: int, device: torch.device) -> float:
    """Seconds to fetch, view and run the teacher over every sample once, in precompute's batches and order."""
    n = len(w.train)
    start = time.perf_counter()
    for lo in range(0, n, batch_size):
        index = np.arange(lo, min(lo + batch_size, n))
        raw, _ = w.train.get_batch(index)
        teacher(w.views(raw, index, np.zeros_like(index)).to(device))
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter() - start
