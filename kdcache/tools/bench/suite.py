"""``kdcache bench``: every figure in one run, a JSON report, a markdown table and the goals judged.

Figures share stores where they can (figure 1's stores are figure 4's memory runs' stores). Work files live under
``<out>/work`` and are removed at the end; ``<out>/bench.json`` and ``<out>/bench.md`` remain.
"""

from __future__ import annotations

import dataclasses
import os
import platform
import shutil
import time
from pathlib import Path
from typing import Any

import torch

from kdcache.store import library_versions
from kdcache.tables import write_json
from kdcache.targets import Target, build_target
from kdcache.tools.bench.delivery import measure_delivery
from kdcache.tools.bench.goals import judge
from kdcache.tools.bench.memory import bytes_per_sample, measure_memory
from kdcache.tools.bench.peers import measure_peers
from kdcache.tools.bench.reads import measure_scaling
from kdcache.tools.bench.settings import BenchSettings, thread_settings
from kdcache.tools.bench.stage_one import measure_stage_one, write_store
from kdcache.tools.bench.startup import measure_startup
from kdcache.tools.bench.steps import measure_digests_at, measure_steps
from kdcache.tools.bench.table import render_markdown
from kdcache.tools.bench.tokens import measure_tokens
from kdcache.tools.bench.workloads import WORKLOADS, Workload, build_workload, generated_images
from kdcache.tools.bench.writes import measure_writes

#: Targets whose bytes figure 4 lists for the ResNet-50 teacher: every kind and logits encoding.
ENCODINGS: list[dict[str, Any]] = [
    {"kind": "logits", "dtype": "float16"},
    {"kind": "logits", "encoding": "int8"},
    {"kind": "logits", "encoding": "topk", "k": 10, "temperatures": [1.0, 4.0]},
    {"kind": "features", "layer": "layer1"},
    {"kind": "features", "layer": "layer3", "pool": [1, 1]},
    {"kind": "embedding", "layer": "avgpool"},
    {"kind": "fsp", "layers": ["relu", "layer1"]},
]


def run_bench(out: Path, settings: BenchSettings, *, progress: bool = True) -> dict[str, Any]:
    """Measure every figure, judge the goals, write ``bench.json`` and ``bench.md`` under ``out``."""
    work = out / "work"
    work.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    try:
        with thread_settings(settings.threads):
            figures = _figures(work, settings, progress)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    report = {
        "command": "kdcache bench" + (" --quick" if settings.quick else ""),
        "settings": settings.describe(),
        "machine": _machine(),
        "seconds": time.perf_counter() - started,
        "figures": figures,
    }
    report["goals"] = judge(figures)
    write_json(out / "bench.json", report)
    (out / "bench.md").write_text(render_markdown(report))
    return report


def _figures(work: Path, settings: BenchSettings, progress: bool) -> dict[str, Any]:
    clock = _Clock()
    workloads = {name: build_workload(name, settings) for name in WORKLOADS}
    stores = {name: work / f"{name}.zarr" for name in workloads}
    for name, w in workloads.items():
        write_store(w, stores[name], w.targets, batch_size=w.batch_size, shard_samples=None, device=settings.device)
    steps = {name: measure_steps(w, str(stores[name]), settings, progress=progress) for name, w in workloads.items()}
    digests = measure_digests_at()
    clock.lap("step_time")
    resnet, digits = workloads["resnet"], workloads["digits"]
    stage_one = _stage_one(resnet, digits, work, settings, progress)
    clock.lap("stage_one")
    scaling = measure_scaling(work, settings, progress=progress)
    clock.lap("reads_and_scaling")
    bytes_rows = _encoding_bytes(resnet, work, settings)
    bytes_rows += bytes_per_sample(stores["digits"], digits.label)
    bytes_rows += scaling.pop("bytes")
    memory = measure_memory(stores, settings)
    clock.lap("bytes_and_memory")
    tokens = measure_tokens(work, settings, progress=progress)
    clock.lap("tokens")
    writes = measure_writes(work, settings, progress=progress)
    clock.lap("writes")
    peers = measure_peers(work, settings, progress=progress)
    clock.lap("peers")
    delivery = measure_delivery(settings, work, progress=progress)
    clock.lap("delivery")
    startup = measure_startup(settings, progress=progress)
    clock.lap("startup")
    return {
        "step_time": steps,
        "digests": digests,
        "stage_one": stage_one,
        "reads": {
            "store": str(settings.read_sizes[0]),
            "student_samples_per_second": {name: s["student_samples_per_second"] for name, s in steps.items()},
        },
        "bytes_per_sample": bytes_rows,
        "memory": memory,
        "scaling": scaling,
        "tokens": tokens,
        "writes": writes,
        "peers": peers,
        "delivery": delivery,
        "startup": startup,
        "seconds": clock.laps,
    }


def _stage_one(
    resnet: Workload, digits: Workload, work: Path, settings: BenchSettings, progress: bool
) -> dict[str, Any]:
    """Figure 2: the ResNet-50 teacher's logits and a feature map, and the digits teacher's logits."""
    return {
        "resnet": measure_stage_one(
            dataclasses.replace(resnet, train=generated_images(settings.stage_one_samples, settings.resnet_classes)),
            {"logits": resnet.targets, "features/layer1": [build_target("features", {"layer": "layer1"})]},
            work,
            settings,
            batch_size=settings.stage_one_batch,
            shard_samples=settings.stage_one_shard,
            rounds=settings.stage_one_rounds,
            progress=progress,
        ),
        "digits": measure_stage_one(
            digits,
            {"logits": digits.targets},
            work,
            settings,
            batch_size=256,
            shard_samples=None,
            rounds=settings.stage_one_rounds,
            progress=progress,
        ),
    }


class _Clock:
    """Seconds spent in each part of the run (to keep the quick and full runs within their time budgets)."""

    def __init__(self) -> None:
        self.laps: dict[str, float] = {}
        self.last = time.perf_counter()

    def lap(self, name: str) -> None:
        now = time.perf_counter()
        self.laps[name] = now - self.last
        self.last = now


def _encoding_bytes(resnet: Workload, work: Path, settings: BenchSettings) -> list[dict[str, Any]]:
    targets: list[Target] = [build_target(e["kind"], {k: v for k, v in e.items() if k != "kind"}) for e in ENCODINGS]
    w = dataclasses.replace(resnet, train=generated_images(settings.bytes_samples, settings.resnet_classes))
    path = work / "encodings.zarr"
    write_store(w, path, targets, batch_size=settings.stage_one_batch, shard_samples=None, device=settings.device)
    return bytes_per_sample(path, f"ResNet-50 teacher, 32×32 generated, {settings.resnet_classes} classes")


def _machine() -> dict[str, Any]:
    return {
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        "libraries": library_versions(),
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
    }
