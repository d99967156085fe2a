"""In-RAM batch delivery: stage two's batches from a store held in RAM against a numpy memmap gather of the same rows.

A store of ``read_classes`` fp16 logits for ``read_sizes[0]`` generated 1x8x8 samples (one clean view,
normalisation only: :data:`kdcache.tools.bench.reads.VIEWS`) is written by :func:`kdcache.precompute` and opened
by :class:`~kdcache.train.CachedDataset` with every array in RAM. The dataset's inputs and labels and the store's
logits are saved as ``.npy`` files too. Each round, one epoch of ``read_batch``-sample batches in the in-RAM order
(uniformly shuffled) is delivered by every variant:

* **memmap gather** (the baseline): ``np.take`` of the same rows from memmaps of the inputs ``(N, 1, 8, 8)``
  float32, the labels ``(N,)`` int64 and the targets ``(N, C)`` float16, into reused buffers: the bytes a batch
  holds, and nothing else (no views, no checks);
* **read_rows alone**: the in-RAM :class:`~kdcache.store.ArrayReader` gather of the targets only;
* **batch_of**: :meth:`CachedDataset.batch_of` with every check (per-sample content digest, per-view input digest,
  view-params bitwise check when the store holds params, value checks);
* **batch_loader, 0 / 2 workers**: iterating :func:`~kdcache.train.batch_loader` (workers: from the first batch
  on, so the workers' start-up, paid once per epoch, is reported apart);
* **per-item DataLoader**: a plain ``DataLoader(dataset, batch_size, shuffle=True)`` and ``as_batch`` of each
  collated batch (what a user's own loop does).

Then ``batch_of``'s parts are timed one by one, the view numbers of an augmented transform are drawn for a batch
(``ViewTransform.params``) and the ``random`` policy keys a batch's views (``view_ids_for``): the bookkeeping where
per-sample Python once cost most. ``python -m kdcache.tools.bench.delivery``
prints the figures (``--quick`` for the small preset, ``--json PATH`` to keep them).
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader

from kdcache.store import open_store
from kdcache.tools.bench.reads import VIEWS, ReadStore, memmap_gather, reader_pass
from kdcache.tools.bench.rounds import interleave, spread
from kdcache.tools.bench.settings import BenchSettings, thread_settings
from kdcache.tools.bench.workloads import TEACHER
from kdcache.train import CachedDataset, batch_loader, set_loader_epoch
from kdcache.train.decoding import check_values
from kdcache.train.epochs import view_ids_for
from kdcache.views import ViewTransform, build_view_op

BASELINE = "memmap gather"
MEMMAP_GATHERS = "np.take of the batch's rows of inputs (N,1,8,8) f32, labels (N,) i64 and targets (N,C) f16"
AUGMENTED = ViewTransform(
    count=4,
    seed=0,
    augment=[
        build_view_op("random_crop", {"padding": 1}),
        build_view_op("horizontal_flip"),
        build_view_op("color_jitter", {"brightness": 0.4, "contrast": 0.4}),
    ],
)


class DeliveryStore:
    """The bench's store opened in RAM, the raw twins of what a batch holds, and one epoch's batches."""

    def __init__(self, workdir: Path, settings: BenchSettings) -> None:
        self.store = ReadStore(workdir, settings.read_sizes[0], settings)
        self.data = CachedDataset(
            self.store.dataset, open_store(str(self.store.path)), teacher=TEACHER, targets=["logits"], views=VIEWS
        )
        self.reader = self.data.readers["logits"]["logits"]
        self.raw = {"inputs": workdir / "inputs.npy", "labels": workdir / "labels.npy", "targets": self.store.raw}
        np.save(self.raw["inputs"], self.store.dataset.inputs.numpy())
        np.save(self.raw["labels"], self.store.dataset.labels.numpy())
        self.batch_size, self.seed = settings.read_batch, settings.seed
        loader = batch_loader(self.data, batch_size=self.batch_size, seed=self.seed)
        set_loader_epoch(loader, 0)
        self.batches = [np.asarray(b.indices) for b in loader.sampler]
        self.num_samples = sum(len(b) for b in self.batches)

    def remove(self) -> None:
        self.store.remove()
        for path in self.raw.values():
            path.unlink(missing_ok=True)


def batch_of_pass(data: CachedDataset, batches: list[np.ndarray]) -> float:
    """Seconds for :meth:`CachedDataset.batch_of` to deliver every batch (epoch 0), every check included."""
    start = time.perf_counter()
    for indices in batches:
        data.batch_of(indices, epoch=0)
    return time.perf_counter() - start


def loader_pass(data: CachedDataset, store: DeliveryStore, workers: int, startup: list[float]) -> float:
    """Seconds for ``batch_loader`` to deliver epoch 0; with workers, from the first batch on (the workers' start
    is appended to ``startup``), scaled to the whole epoch."""
    loader = batch_loader(data, batch_size=store.batch_size, seed=store.seed, num_workers=workers)
    set_loader_epoch(loader, 0)
    start = time.perf_counter()
    batches = iter(loader)
    next(batches)
    after_first = time.perf_counter()
    rest = sum(len(b.indices) for b in batches)
    end = time.perf_counter()
    if workers == 0 or rest == 0:
        return end - start
    startup.append(after_first - start)
    return (end - after_first) * store.num_samples / rest


def per_item_pass(data: CachedDataset, store: DeliveryStore) -> float:
    """Seconds for a plain ``DataLoader(shuffle=True, batch_size)`` plus ``as_batch`` to deliver one epoch."""
    generator = torch.Generator().manual_seed(store.seed)
    loader = DataLoader(data, batch_size=store.batch_size, shuffle=True, generator=generator)
    start = time.perf_counter()
    for items in loader:
        data.as_batch(items)
    return time.perf_counter() - start


PARTS = ("views", "sample digest check", "params check", "view digest check", "target read + value checks")


def part_seconds(data: CachedDataset, batches: list[np.ndarray]) -> dict[str, float]:
    """Seconds of each part of :meth:`CachedDataset.batch_of` over ``batches``, the parts run in its order."""
    spent = dict.fromkeys(PARTS, 0.0)
    for indices in batches:
        clock = [time.perf_counter()]
        rows, view_ids = data.row_of[indices], data.view_ids(indices, 0)
        made = data.views.batch(data.dataset, indices, view_ids)
        clock.append(time.perf_counter())
        data.check(indices, rows, made.raw, made.labels)
        clock.append(time.perf_counter())
        if data.params_reader is not None:
            batch = data.make_batch(indices, view_ids, made)
            data._check_params(batch, made.params, data.params_reader.read_rows(rows, view_ids))
        clock.append(time.perf_counter())
        data.check_views(indices, view_ids, rows, made.inputs)
        clock.append(time.perf_counter())
        stored = {n: {k: r.read_rows(rows, view_ids) for k, r in a.items()} for n, a in data.readers.items()}
        check_values(data.url, data.value_checks, stored, indices)
        clock.append(time.perf_counter())
        for name, lo, hi in zip(PARTS, clock[:-1], clock[1:], strict=True):
            spent[name] += hi - lo
    return spent


def params_rate(batch_size: int, batches: int = 32) -> float:
    """Views per second for :data:`AUGMENTED` (4 views, crop + flip + jitter) to draw a batch's numbers."""
    rng = np.random.default_rng(0)
    pairs = [(rng.integers(0, 1 << 20, batch_size), rng.integers(0, 4, batch_size)) for _ in range(batches)]
    start = time.perf_counter()
    for indices, view_ids in pairs:
        AUGMENTED.params(indices, view_ids, (32, 32))
    return batch_size * batches / (time.perf_counter() - start)


def view_ids_rate(batch_size: int, batches: int = 32) -> float:
    """Samples per second for the ``random`` policy to key a batch's views (4 views, by (seed, epoch, sample))."""
    pairs = [np.arange(k * batch_size, (k + 1) * batch_size) for k in range(batches)]
    start = time.perf_counter()
    for indices in pairs:
        view_ids_for(AUGMENTED, "random", indices, 1)
    return batch_size * batches / (time.perf_counter() - start)


def measure_delivery(settings: BenchSettings, workdir: Path | None = None, *, progress: bool = True) -> dict[str, Any]:
    """Samples/s of every variant (interleaved rounds), their ratios to the memmap gather (paired per round),
    ``batch_of``'s parts in ms per batch, and the vectorised view-number draws."""
    with tempfile.TemporaryDirectory(dir=workdir) as tmp:
        store = DeliveryStore(Path(tmp), settings)
        try:
            return _measured(store, settings, progress)
        finally:
            store.remove()


def _measured(store: DeliveryStore, settings: BenchSettings, progress: bool) -> dict[str, Any]:
    data, batches = store.data, store.batches
    startup: list[float] = []
    variants = {
        BASELINE: lambda: memmap_gather(list(store.raw.values()), batches),
        "read_rows alone (targets)": lambda: reader_pass(store.reader, batches),
        "batch_of": lambda: batch_of_pass(data, batches),
        "batch_loader, 0 workers": lambda: loader_pass(data, store, 0, startup),
        "batch_loader, 2 workers": lambda: loader_pass(data, store, 2, startup),
        "per-item DataLoader(shuffle=True)": lambda: per_item_pass(data, store),
    }
    samples = interleave(
        variants, rounds=max(settings.read_rounds, 3), warmup=settings.warmup, desc="delivery", progress=progress
    )
    n = store.num_samples
    parts = [part_seconds(data, batches) for _ in range(3)]
    return {
        "samples": n,
        "batch_size": store.batch_size,
        "classes": settings.read_classes,
        "baseline_gathers": MEMMAP_GATHERS,
        "params_stored": data.params_reader is not None,
        "samples_per_second": {name: spread([n / s for s in samples.values[name]]) for name in variants},
        "ratio_to_memmap": {name: samples.ratio(BASELINE, name) for name in variants if name != BASELINE},
        "worker_startup_seconds": spread(startup) if startup else None,
        "parts_ms_per_batch": {p: min(r[p] for r in parts) * 1e3 / len(batches) for p in PARTS},
        "augmented_params_views_per_second": max(params_rate(store.batch_size) for _ in range(3)),
        "random_view_ids_samples_per_second": max(view_ids_rate(store.batch_size) for _ in range(3)),
    }


def render(report: dict[str, Any]) -> str:
    """The figures as a short markdown table and lines (what docs/benchmarks.md records)."""
    lines = [
        f"{report['samples']} samples, batch {report['batch_size']}, {report['classes']} fp16 logits; baseline: "
        f"{report['baseline_gathers']}",
        "",
        "| variant | samples/s | / memmap gather |",
        "|---|---|---|",
    ]
    for name, rate in report["samples_per_second"].items():
        ratio = report["ratio_to_memmap"].get(name)
        shown = "1" if ratio is None else f"{ratio['median']:.2f} [{ratio['min']:.2f}–{ratio['max']:.2f}]"
        lines.append(f"| {name} | {rate['median']:,.0f} [{rate['min']:,.0f}–{rate['max']:,.0f}] | {shown} |")
    parts = ", ".join(f"{name} {ms:.3f}" for name, ms in report["parts_ms_per_batch"].items())
    lines += ["", f"batch_of parts, ms per batch: {parts}"]
    lines.append(f"augmented view numbers: {report['augmented_params_views_per_second']:,.0f} views/s")
    lines.append(f"random-policy view ids: {report['random_view_ids_samples_per_second']:,.0f} samples/s")
    if report["worker_startup_seconds"]:
        lines.append(f"worker start-up per epoch: {report['worker_startup_seconds']['median']:.2f} s")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="the small preset")
    parser.add_argument("--json", type=Path, help="also write the figures there")
    args = parser.parse_args(argv)
    settings = BenchSettings.quick_preset() if args.quick else BenchSettings.full()
    with thread_settings(settings.threads):
        report = measure_delivery(settings)
    if args.json:
        args.json.write_text(json.dumps(report, indent=1))
    print(render(report))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
