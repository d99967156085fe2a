"""Figures 3 and 5: target read rate in stage two's access order against raw reads of the same bytes.

A store of ``read_classes`` fp16 logits is written by :func:`kdcache.precompute`, and the same bytes are saved as
a ``.npy`` file. Both are read in the order stage two uses (:func:`kdcache.train.batch_loader`'s block-shuffled
global batches of ``read_batch`` samples): the store through the streaming :class:`~kdcache.store.ArrayReader`
(kdcache's uncompressed layout read directly, :mod:`kdcache.store.direct`: whole chunks by ``pread`` into a 64 MB
chunk cache, or single rows, each checked against the digest of the bytes whose SHA-256 was checked on first
touch), the ``.npy`` through a numpy memmap gather (``np.take`` into a reused buffer). Per round:

* **pass 1** — a fresh reader, epoch 0: includes the digest check of every shard;
* **pass 2** — epoch 1 through a reader whose shards were verified beforehand (untimed) and whose chunk cache is
  empty: what every later epoch costs once the store is larger than the reader's 64 MB chunk cache;
* **uniform** — like pass 2 in a uniform order (a plain ``DataLoader(shuffle=True)``'s): a few rows of each chunk
  per batch, read row by row;
* **memmap** — the same order as pass 1; **memmap, uniform** — the uniform order.

``cold`` evicts the store and the ``.npy`` from the page cache before every pass (:mod:`kdcache.tools.bench.pagecache`),
``warm`` reads them once first. The parts are measured too, to say where the time goes: SHA-256 of every shard,
zarr reading every whole chunk once, and the in-RAM gather the library uses when the array fits its RAM budget
(plus tensorstore reading the same chunks, as a reference engine, when it is installed).
"""

from __future__ import annotations

import shutil
import time
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np

from kdcache.precompute import precompute
from kdcache.store import ArrayReader, open_store, shard_count, shard_ranges
from kdcache.targets import build_target
from kdcache.tools.bench import pagecache
from kdcache.tools.bench.memory import bytes_per_sample
from kdcache.tools.bench.rounds import Samples, Variant, interleave, spread
from kdcache.tools.bench.settings import BenchSettings
from kdcache.tools.bench.workloads import TEACHER, logits_source
from kdcache.train import CachedDataset, batch_loader, set_loader_epoch
from kdcache.views import ViewTransform

VIEWS = ViewTransform(count=1, seed=0, mean=(0.5,), std=(0.25,))


class ReadStore:
    """A written logits store, its raw twin as ``.npy``, and the batches of two epochs in stage-two order."""

    def __init__(self, workdir: Path, num_samples: int, settings: BenchSettings) -> None:
        self.num_samples = num_samples
        self.path = workdir / f"reads-{num_samples}.zarr"
        self.raw = workdir / f"reads-{num_samples}.npy"
        self.dataset, teacher = logits_source(num_samples, settings.read_classes, seed=settings.seed)
        shutil.rmtree(self.path, ignore_errors=True)
        precompute(
            teacher,
            self.dataset,
            str(self.path),
            targets=[build_target("logits", {"dtype": "float16"})],
            views=VIEWS,
            num_classes=settings.read_classes,
            teacher_name=TEACHER,
            batch_size=4096,
            progress=False,
        )
        reader = self.reader()
        np.save(self.raw, reader.read_all()[:, 0])
        self.sample_bytes = int(np.load(self.raw, mmap_mode="r")[0].nbytes)
        loader = batch_loader(self.streamed(), batch_size=settings.read_batch, seed=settings.seed)
        self.epochs = []
        for epoch in (0, 1):
            set_loader_epoch(loader, epoch)
            self.epochs.append([np.asarray(b.indices) for b in loader.sampler])
        permuted = np.random.default_rng([settings.seed, 1]).permutation(num_samples)
        self.uniform = np.array_split(permuted, -(-num_samples // settings.read_batch))
        self.chunk, self.shard = reader.chunk, reader.shard

    def streamed(self) -> CachedDataset:
        """The store as stage two opens it when the targets do not fit the RAM budget."""
        return CachedDataset(
            self.dataset,
            open_store(str(self.path)),
            teacher=TEACHER,
            targets=["logits"],
            views=VIEWS,
            ram_budget_bytes=0,
        )

    def in_ram(self) -> ArrayReader:
        """The reader stage two uses when the array fits its RAM budget: loaded (and verified) once."""
        data = CachedDataset(self.dataset, open_store(str(self.path)), teacher=TEACHER, targets=["logits"], views=VIEWS)
        return data.readers["logits"]["logits"]

    def reader(self) -> ArrayReader:
        """A fresh streaming reader: nothing verified, nothing cached."""
        return self.streamed().readers["logits"]["logits"]

    def verified_reader(self) -> ArrayReader:
        """A fresh streaming reader whose every shard is verified (SHA-256 checked, digests kept), nothing cached."""
        reader = self.reader()
        for index in range(reader.num_shards):
            reader.verify_shard(index)
        return reader

    def files(self) -> list[Path]:
        return [*pagecache.files_under(self.path), self.raw]

    def remove(self) -> None:
        shutil.rmtree(self.path, ignore_errors=True)
        self.raw.unlink(missing_ok=True)


def reader_pass(reader: ArrayReader, batches: list[np.ndarray]) -> float:
    """Seconds to read the targets of every batch through ``reader``, as :class:`CachedDataset` does."""
    start = time.perf_counter()
    for rows in batches:
        reader.read_rows(rows, np.zeros(len(rows), dtype=np.int64))
    return time.perf_counter() - start


def memmap_pass(raw: Path, batches: list[np.ndarray]) -> float:
    """Seconds to gather the same rows from a freshly opened memmap into a reused buffer."""
    return memmap_gather([raw], batches)


def memmap_gather(raws: list[Path], batches: list[np.ndarray]) -> float:
    """Seconds to gather every batch's rows of each ``.npy`` file from fresh memmaps into reused buffers."""
    start = time.perf_counter()
    mapped = [np.load(raw, mmap_mode="r") for raw in raws]
    size = max(len(b) for b in batches)
    outs = [np.empty((size, *m.shape[1:]), dtype=m.dtype) for m in mapped]
    for rows in batches:
        for m, out in zip(mapped, outs, strict=True):
            np.take(m, rows, axis=0, out=out[: len(rows)], mode="clip")
    seconds = time.perf_counter() - start
    del mapped  # a mapped page cannot be evicted
    return seconds


def measure_reads(store: ReadStore, settings: BenchSettings, *, cold: bool, progress: bool = True) -> dict[str, Any]:
    """Passes 1 and 2 through the library and the memmap pass, interleaved in rounds, warm or cold."""
    state: dict[str, Any] = {"chunks_read": [], "resident_after_evict": []}

    def prepare() -> None:
        if cold:
            pagecache.evict(store.files())
            state["resident_after_evict"].append(pagecache.resident_fraction(store.files()))
        else:
            pagecache.warm(store.files())

    def read(batches: list[np.ndarray], *, verified: bool) -> float:
        reader = store.verified_reader() if verified else store.reader()
        prepare()
        return reader_pass(reader, batches)

    def second() -> float:
        reader = store.verified_reader()
        prepare()
        seconds = reader_pass(reader, store.epochs[1])
        state["chunks_read"].append(sum(reader.chunks_read.values()))
        return seconds

    def memmap(batches: list[np.ndarray]) -> float:
        prepare()
        return memmap_pass(store.raw, batches)

    variants: dict[str, Variant] = {
        "library, pass 1": partial(read, store.epochs[0], verified=False),
        "library, pass 2": second,
        "library, uniform": partial(read, store.uniform, verified=True),
        "memmap": partial(memmap, store.epochs[0]),
        "memmap, uniform": partial(memmap, store.uniform),
    }
    samples = interleave(
        variants,
        rounds=settings.read_rounds,
        warmup=settings.warmup,
        desc=f"fig 3 {store.num_samples} {'cold' if cold else 'warm'}",
        progress=progress,
    )
    n = store.num_samples
    rates = {name: _rate(samples, name, n, store.sample_bytes) for name in samples.values}
    evicted = [r for r in state["resident_after_evict"] if r is not None]
    return {
        "samples_per_second": rates,
        "ratio_to_memmap": {
            "pass 1": samples.ratio("memmap", "library, pass 1"),
            "pass 2": samples.ratio("memmap", "library, pass 2"),
            "uniform": samples.ratio("memmap, uniform", "library, uniform"),
        },
        "uniform_over_block": samples.ratio("library, pass 2", "library, uniform"),
        "pass_2_chunks_read": state["chunks_read"][-1],
        "chunks": shard_count(n, store.chunk),
        "resident_fraction_after_evict": max(evicted) if evicted else None,
    }


def measure_parts(store: ReadStore) -> dict[str, float]:
    """Samples/s of the parts of a warm pass, each the best of three: the digest check, zarr reading every whole
    chunk, the library reading the same chunks (pread, XXH3 against the verified digest, into its chunk cache) and
    the same rows one per call (row reads once the array is larger than the chunk cache), memmap copying the same chunks, and the in-RAM gather
    (the library's path when the array fits)."""
    pagecache.warm(store.files())
    n = store.num_samples
    chunks = shard_ranges(n, store.chunk)
    array = store.reader().array()
    mapped = np.load(store.raw, mmap_mode="r")
    in_ram = store.in_ram()

    def digest() -> float:
        reader = store.reader()
        start = time.perf_counter()
        for index in range(shard_count(n, store.shard)):
            reader.verify_shard(index)
        return time.perf_counter() - start

    parts = {
        "digest (SHA-256 of every shard)": digest,
        "zarr, whole chunks": lambda: _seconds(lambda: [np.asarray(array[lo:hi]) for lo, hi in chunks]),
        "library, whole chunks": lambda: _library_chunks(store, chunks),
        "library, one row per call": lambda: reader_pass(store.verified_reader(), [np.array([r]) for r in range(n)]),
        "memmap, whole chunks": lambda: _seconds(lambda: [np.array(mapped[lo:hi]) for lo, hi in chunks]),
        "in-RAM gather (array fits the budget)": lambda: reader_pass(in_ram, store.epochs[0]),
    }
    engine = _tensorstore_chunks(store, chunks)
    if engine is not None:
        parts["tensorstore, whole chunks (reference engine)"] = engine
    return {name: n / min(part() for _ in range(3)) for name, part in parts.items()}


def _library_chunks(store: ReadStore, chunks: list[tuple[int, int]]) -> float:
    """Seconds for a verified streaming reader to read every chunk whole, once (timed after the verification)."""
    reader = store.verified_reader()
    return _seconds(lambda: [reader.read_rows(np.arange(lo, hi)) for lo, hi in chunks])


def _tensorstore_chunks(store: ReadStore, chunks: list[tuple[int, int]]) -> Any:
    """Seconds for tensorstore to read the same whole chunks, when it is installed (``pip install tensorstore``):
    what another Zarr v3 engine gets from the same store, so a slow figure can be put on the engine or the format."""
    try:
        import tensorstore
    except ImportError:
        return None
    path = store.path / store.reader().record.path
    spec = {"driver": "zarr3", "kvstore": {"driver": "file", "path": str(path)}}
    array = tensorstore.open(spec, read=True).result()
    return lambda: _seconds(lambda: [array[lo:hi].read().result() for lo, hi in chunks])


def measure_scaling(workdir: Path, settings: BenchSettings, *, progress: bool = True) -> dict[str, Any]:
    """Figure 3 at both store sizes, warm and cold, and how the per-sample cost grows from the small to the large
    one (figure 3 proper is the small store's entry)."""
    sizes: dict[str, Any] = {}
    bytes_rows: list[dict[str, Any]] = []
    for n in settings.read_sizes:
        store = ReadStore(workdir, n, settings)
        try:
            if not bytes_rows:
                bytes_rows = bytes_per_sample(store.path, f"linear teacher, {settings.read_classes} classes")
            entry: dict[str, Any] = {
                "samples": n,
                "store_megabytes": sum(f.stat().st_size for f in pagecache.files_under(store.path)) / 1e6,
                "bytes_per_sample": store.sample_bytes,
                "chunk_samples": store.chunk,
                "shard_samples": store.shard,
                "warm": measure_reads(store, settings, cold=False, progress=progress),
                "parts_samples_per_second": measure_parts(store),
            }
            if pagecache.CAN_EVICT:
                entry["cold"] = measure_reads(store, settings, cold=True, progress=progress)
            sizes[str(n)] = entry
        finally:
            store.remove()
    small, large = (sizes[str(n)] for n in settings.read_sizes)
    growth = {
        f"{state}, {which}": _median_rate(small, state, which) / _median_rate(large, state, which)
        for state in ("warm", "cold")
        if state in small
        for which in ("library, pass 1", "library, pass 2", "library, uniform", "memmap")
    }
    return {
        "sizes": sizes,
        "per_sample_cost_growth": growth,
        "size_ratio": large["samples"] / small["samples"],
        "bytes": bytes_rows,
    }


def _median_rate(entry: dict[str, Any], state: str, which: str) -> float:
    return entry[state]["samples_per_second"][which]["median"]


def _rate(samples: Samples, name: str, n: int, sample_bytes: int) -> dict[str, Any]:
    rates = spread([n / s for s in samples.values[name]])
    rates["gigabytes_per_second"] = rates["median"] * sample_bytes / 1e9
    return rates


def _seconds(fn: Any) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start
