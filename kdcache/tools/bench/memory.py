"""Figure 4: bytes per sample of each target and encoding, and peak resident memory of stage two.

Bytes come from real stores written by :func:`kdcache.precompute`: raw (dtype x shape) and on disk (the committed
shard files, so codecs, checksums and shard indexes count). Peak memory is the peak resident set size
(the kernel's ``VmHWM``, else ``getrusage``) of a separate Python process per run, so nothing of the bench itself is counted: the same student
trained for the same batches by :func:`kdcache.train.fit`, student-only against cached KD (targets in RAM, and
streamed). Run one with ``python -m kdcache.tools.bench.memory '<json spec>'``.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict
from pathlib import Path
from typing import Any, TypedDict

import numpy as np

from kdcache.store import open_store
from kdcache.tools.bench.rounds import spread
from kdcache.tools.bench.settings import BenchSettings
from kdcache.tools.bench.workloads import TEACHER

VARIANTS = ("student-only", "cached KD", "cached KD (streamed)")


def bytes_per_sample(store: Path, label: str) -> list[dict[str, Any]]:
    """One row per target of the store's teacher: raw and on-disk bytes per sample, dtype and codec."""
    cache = open_store(str(store))
    n = cache.num_samples
    rows = []
    for name, target in sorted(cache.teacher(TEACHER).targets.items()):
        records = list(target.arrays.values())
        shown = ("encoding", "dtype", "k", "pool", "compressor")
        params = {k: v for k, v in target.params.items() if k in shown and v is not None}
        rows.append(
            {
                "store": label,
                "target": name,
                "params": params,
                "arrays": len(records),
                "raw": sum(int(np.prod(r.shape[1:])) * np.dtype(r.dtype).itemsize for r in records),
                "disk": sum(cache.array_bytes(r.path) for r in records) / n,
                "codec": sorted({r.compressor for r in records}),
                "samples": n,
            }
        )
    return rows


def peak_rss(workload: str, variant: str, store: Path, settings: BenchSettings) -> int:
    """Peak RSS in bytes of a fresh process that trains ``workload``'s student as ``variant``."""
    spec = {"workload": workload, "variant": variant, "store": str(store), "settings": asdict(settings)}
    done = subprocess.run(
        [sys.executable, "-m", "kdcache.tools.bench.memory", json.dumps(spec)],
        capture_output=True,
        text=True,
        check=False,
        timeout=600,
    )
    if done.returncode != 0:
        raise RuntimeError(f"the {workload}/{variant} memory run failed:\n{done.stderr[-2000:]}")
    return int(json.loads(done.stdout.strip().splitlines()[-1])["peak_rss_bytes"])


def measure_memory(stores: dict[str, Path], settings: BenchSettings) -> dict[str, Any]:
    """Peak RSS of each variant of each workload over ``memory_repeats`` repeats.

    A process's peak RSS does not depend on how busy the CPU is, so the runs go in parallel (one per core).
    """
    runs = [(w, v) for _ in range(settings.memory_repeats) for w in stores for v in VARIANTS]
    with ThreadPoolExecutor(max_workers=max(2, os.cpu_count() or 2)) as pool:
        found = list(pool.map(lambda run: peak_rss(run[0], run[1], stores[run[0]], settings), runs))
    result: dict[str, Any] = {}
    for workload in stores:
        peaks = {v: [p for (w, var), p in zip(runs, found, strict=True) if (w, var) == (workload, v)] for v in VARIANTS}
        base = peaks["student-only"]
        result[workload] = {
            "peak_rss_megabytes": {v: spread([p / 1e6 for p in values]) for v, values in peaks.items()},
            "ratio_to_student_only": {
                v: spread([p / b for p, b in zip(peaks[v], base, strict=True)]) for v in VARIANTS[1:]
            },
        }
    return result


class _Budget(TypedDict, total=False):
    """The RAM budget a cached variant is given (left out: the library's default)."""

    ram_budget_bytes: float


def _child(spec: dict[str, Any]) -> dict[str, Any]:
    """Train one variant for one epoch in this process and report its peak RSS."""
    import torch

    from kdcache.tools.bench.workloads import build_workload
    from kdcache.train import CachedDataset, ViewDataset

    settings = BenchSettings(**{**spec["settings"], "read_sizes": tuple(spec["settings"]["read_sizes"])})
    torch.set_num_threads(settings.threads)
    w = build_workload(spec["workload"], settings)
    student = w.make_student()
    variant = spec["variant"]
    if variant == "student-only":
        data, stages = ViewDataset(w.train, w.views), w.student_only
    else:
        budget: _Budget = {"ram_budget_bytes": 0} if variant == "cached KD (streamed)" else {}
        data = CachedDataset(
            w.train, open_store(spec["store"]), teacher=TEACHER, targets=w.target_names, views=w.views, **budget
        )
        stages = w.distill
    w.fit_one_epoch(student, data, stages, settings.device)
    return {"peak_rss_bytes": _peak_rss_bytes()}


def _peak_rss_bytes() -> int:
    """This process's peak resident set size in bytes.

    On Linux ``getrusage``'s ``ru_maxrss`` survives ``fork`` + ``exec``: a child started by a large parent reports
    the parent's peak. The kernel's high-water mark of this process's own memory (``VmHWM``) does not, so it is
    read where it exists.
    """
    status = Path("/proc/self/status")
    if status.exists():
        for line in status.read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024  # kB
    try:
        import resource
    except ImportError:  # Windows
        import psutil

        return int(psutil.Process().memory_info().peak_wset)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(peak if sys.platform == "darwin" else peak * 1024)  # bytes on macOS, KiB elsewhere


if __name__ == "__main__":
    print(json.dumps(_child(json.loads(sys.argv[1]))))
