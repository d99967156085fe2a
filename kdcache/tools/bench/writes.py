"""Figure 7, writes: the same rows stored by kdcache's stage one, h5py, a numpy memmap, safetensors and plain sharded zarr.

Every variant starts from the same float32 teacher outputs in RAM (1000-class logits of generated inputs) and stores
them as float16 rows in a fresh file, timed from the first byte to a closed file (no variant calls fsync of its
data; kdcache's commit records and manifest are fsynced, as always):

* **kdcache writer path**: stage one after the teacher, the goal's figure: the batches of a precompute run whose
  teacher is ``nn.Flatten`` over a dataset whose inputs are the logits are made first (views and forward passes,
  untimed), then handed to the writer path a run uses (:func:`kdcache.precompute.local.write_batches`): the
  finite/overflow check, the encoding, the sample and view digests and accuracy counts on the writer thread, the
  shard files, their SHA-256, the commit records and the manifest. At batch 4096 and at the default 256;
* **kdcache stage one, free teacher**: the same as one complete :func:`kdcache.precompute`, views and forward
  passes included, with its parts timed as in figure 2 (:data:`STAGE_ONE_PARTS`);
* **h5py**: one contiguous float16 dataset, written a shard's rows at a time;
* **numpy memmap**: an ``.npy`` from ``open_memmap``, written a shard's rows at a time, then flushed;
* **safetensors**: ``save_file`` of the whole float16 tensor;
* **zarr (sharded)**: zarr-python writing kdcache's own layout (same chunks, shards and crc32c) shard by shard.

Variants run interleaved in rounds (:mod:`kdcache.tools.bench.rounds`); ratios are paired within a round.
``python -m kdcache.tools.bench.writes [--quick]`` runs it alone and prints its table.
"""

from __future__ import annotations

import argparse
import shutil
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import h5py
import numpy as np
import safetensors.torch
import torch
import zarr
from torch import nn

from kdcache.datasets import TensorDataset
from kdcache.precompute import TeacherRun
from kdcache.precompute.engine import declared_store
from kdcache.precompute.job import StageOneJob
from kdcache.precompute.local import run_local, write_batches
from kdcache.store.layout import ArraySpec
from kdcache.store.writer import create_array
from kdcache.tables import markdown_table, write_json
from kdcache.targets import build_target
from kdcache.tools.bench.rounds import interleave, spread
from kdcache.tools.bench.settings import BenchSettings, thread_settings
from kdcache.tools.bench.stage_one import STAGE_ONE_PARTS, call_spans, part_seconds
from kdcache.views import ViewTransform

WRITER = "kdcache writer path"
STAGE_ONE = "kdcache stage one, free teacher"


@dataclass(frozen=True)
class WriteSizes:
    """The rows written: samples, classes, samples per shard, stage one's batch size, rounds."""

    samples: int
    classes: int
    shard: int
    batch: int
    rounds: int

    @classmethod
    def of(cls, settings: BenchSettings) -> WriteSizes:
        """The full preset: 32k samples of 1000 classes (66 MB as float16) in 4 shards of 8,192; quick: 16k
        samples in 4 shards of 4,096. Stage one's batch: 4,096 samples."""
        return cls(16384, 1000, 4096, 4096, 2) if settings.quick else cls(32768, 1000, 8192, 4096, 3)


def teacher_rows(sizes: WriteSizes, seed: int) -> torch.Tensor:
    """Logit-like float32 rows: what a teacher hands stage one."""
    return torch.randn(sizes.samples, sizes.classes, generator=torch.Generator().manual_seed(seed)) * 4


def measure_writes(workdir: Path, settings: BenchSettings, *, progress: bool = True) -> dict[str, Any]:
    """Every writer over the same rows, interleaved; samples/s of each, its ratio to h5py, kdcache's parts."""
    sizes = WriteSizes.of(settings)
    rows = teacher_rows(sizes, settings.seed)
    parts: list[dict[str, float]] = []

    def fresh(suffix: str) -> Path:
        return workdir / f"writes-{uuid.uuid4().hex[:8]}{suffix}"

    def run(write: Callable[[Path], float], suffix: str) -> Callable[[], float]:
        def variant() -> float:
            path = fresh(suffix)
            try:
                return write(path)
            finally:
                shutil.rmtree(path, ignore_errors=True) if path.is_dir() else path.unlink(missing_ok=True)

        return variant

    def kdcache_store(path: Path) -> float:
        with call_spans(STAGE_ONE_PARTS) as spans:
            seconds = _kdcache(rows, path, sizes)
        parts.append({**part_seconds(spans), "total": seconds})
        return seconds

    variants = {
        WRITER: run(lambda p: _kdcache_writer(rows, p, sizes, sizes.batch), ".zarr"),
        f"{WRITER}, batch 256": run(lambda p: _kdcache_writer(rows, p, sizes, 256), ".zarr"),
        STAGE_ONE: run(kdcache_store, ".zarr"),
        "h5py": run(lambda p: _h5py(rows, p, sizes), ".h5"),
        "numpy memmap": run(lambda p: _memmap(rows, p, sizes), ".npy"),
        "safetensors": run(lambda p: _safetensors(rows, p), ".safetensors"),
        "zarr (sharded, kdcache's layout)": run(lambda p: _zarr(rows, p, sizes), ".zarr"),
    }
    samples = interleave(variants, rounds=sizes.rounds, warmup=settings.warmup, desc="writes", progress=progress)
    recorded = parts[-sizes.rounds :]
    return {
        "rows": f"{sizes.samples:,} × {sizes.classes} float32 logits stored as float16 ({2 * sizes.classes} B/sample)",
        "samples": sizes.samples,
        "shard_samples": sizes.shard,
        "batch_size": sizes.batch,
        "samples_per_second": {name: spread([sizes.samples / s for s in v]) for name, v in samples.values.items()},
        "ratio_to_h5py": {name: samples.ratio("h5py", name) for name in variants},  # h5py's time / the variant's
        "kdcache_parts_seconds": {key: spread([p[key] for p in recorded]) for key in recorded[0]},
    }


def _job(rows: torch.Tensor, batch_size: int) -> StageOneJob:
    """Stage one of ``rows`` through a teacher that costs nothing: ``nn.Flatten`` over inputs that are the rows."""
    inputs = rows.view(len(rows), 1, 1, -1)
    labels = torch.zeros(len(rows), dtype=torch.int64)
    data = TensorDataset(inputs, labels, split="train", source={"kind": "bench-writes", "rows": list(rows.shape)})
    targets = (build_target("logits", {"dtype": "float16"}),)
    return StageOneJob(
        teacher=nn.Flatten(),
        dataset=data,
        targets=targets,
        views=ViewTransform(count=1, seed=0),
        num_classes=rows.shape[1],
        batch_size=batch_size,
    )


def _kdcache(rows: torch.Tensor, path: Path, sizes: WriteSizes) -> float:
    """One complete precompute; the library's own seconds (first shard to committed manifest)."""
    return run_local(_job(rows, sizes.batch), str(path), shard_samples=sizes.shard, progress=False).seconds


def _kdcache_writer(rows: torch.Tensor, path: Path, sizes: WriteSizes, batch_size: int) -> float:
    """Seconds of stage one's writer path over batches made beforehand (views and forward passes untimed)."""
    with TeacherRun(_job(rows, batch_size)) as run:
        declared = run.declaration()
        with declared_store(declared, str(path), shard_samples=sizes.shard, break_lock=False) as (builder, work):
            made = {item.index: list(run.batches(item)) for item in work}
            start = time.perf_counter()
            write_batches(run, builder, work, lambda item: made[item.index], lambda done: None)
            return time.perf_counter() - start


def _h5py(rows: torch.Tensor, path: Path, sizes: WriteSizes) -> float:
    start = time.perf_counter()
    with h5py.File(path, "w") as f:
        out = f.create_dataset("logits", shape=tuple(rows.shape), dtype=np.float16)
        for lo in range(0, len(rows), sizes.shard):
            out[lo : lo + sizes.shard] = rows[lo : lo + sizes.shard].half().numpy()
    return time.perf_counter() - start


def _memmap(rows: torch.Tensor, path: Path, sizes: WriteSizes) -> float:
    start = time.perf_counter()
    out = np.lib.format.open_memmap(path, mode="w+", dtype=np.float16, shape=tuple(rows.shape))
    for lo in range(0, len(rows), sizes.shard):
        out[lo : lo + sizes.shard] = rows[lo : lo + sizes.shard].half().numpy()
    out.flush()
    del out
    return time.perf_counter() - start


def _safetensors(rows: torch.Tensor, path: Path) -> float:
    start = time.perf_counter()
    safetensors.torch.save_file({"logits": rows.half()}, str(path))
    return time.perf_counter() - start


def _zarr(rows: torch.Tensor, path: Path, sizes: WriteSizes) -> float:
    start = time.perf_counter()
    spec = ArraySpec("logits", (rows.shape[1],), "float16")
    group = zarr.open_group(str(path), mode="w", zarr_format=3)
    out = create_array(group, spec, len(rows), sizes.shard)
    for lo in range(0, len(rows), sizes.shard):
        out[lo : lo + sizes.shard] = rows[lo : lo + sizes.shard].half().numpy()
    return time.perf_counter() - start


def render_writes(writes: dict[str, Any]) -> str:
    """The figure as markdown: samples/s and the ratio to h5py of every writer, then kdcache's parts."""
    table = [
        [
            name,
            f"{rate['median']:,.0f} [{rate['min']:,.0f}–{rate['max']:,.0f}]",
            f"{writes['ratio_to_h5py'][name]['median']:.2f}",
        ]
        for name, rate in writes["samples_per_second"].items()
    ]
    parts = [[name, f"{p['median']:.3f}"] for name, p in writes["kdcache_parts_seconds"].items()]
    return (
        f"#### 7. Writes: {writes['rows']}, shards of {writes['shard_samples']:,}, stage-one batch {writes['batch_size']}"
        "\n\n" + markdown_table(["writer", "samples/s", "throughput / h5py"], table) + "\n\n"
        "kdcache's parts (seconds, median; the writer's parts overlap the teacher's thread):\n\n"
        + markdown_table(["part", "seconds"], parts)
    )


def main(argv: list[str] | None = None) -> int:
    """``python -m kdcache.tools.bench.writes [--quick] [--out DIR]``: the writes figure alone."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="16k samples instead of 32k, 2 rounds")
    parser.add_argument("--out", type=Path, default=Path("runs/bench-writes"), help="where writes.json goes")
    args = parser.parse_args(argv)
    settings = BenchSettings.quick_preset() if args.quick else BenchSettings.full()
    work = args.out / "work"
    work.mkdir(parents=True, exist_ok=True)
    try:
        with thread_settings(settings.threads):
            writes = measure_writes(work, settings)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    write_json(args.out / "writes.json", writes)
    print(render_writes(writes))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
