"""Figure 8: kdcache's target reads against the formats users would otherwise keep teacher outputs in.

The same rows (figure 3's store: ``read_classes`` fp16 logits per sample) are saved as a ``.npy`` file, a
safetensors file and an HDF5 file (512-row chunks, h5py's usual layout for row access), and every format is read in
the same batches in two orders, interleaved in rounds (:mod:`kdcache.tools.bench.rounds`):

* **B** — stage two's block-shuffled order (:func:`kdcache.train.batch_loader`'s batches of epoch 1);
* **U** — uniform shuffle, every batch ``read_batch`` rows drawn without replacement from the whole store (what a
  plain ``DataLoader(shuffle=True)`` asks for), the first ``peer_batches`` batches of the permutation.

kdcache is read streamed (its shards verified beforehand, as in every epoch after the first, the chunk cache empty)
and in RAM (the array loaded and verified once). mosaicml-streaming and litdata are not measured: installing them
downgrades ``transformers``, ``huggingface_hub`` and ``numpy`` below what kdcache's language-model extra needs
(measured on this machine), so they cannot share an environment with kdcache; their figures from an earlier run are
quoted in docs/benchmarks.md.
"""

from __future__ import annotations

import json
import struct
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import h5py
import numpy as np
from safetensors import safe_open
from safetensors.numpy import save_file

from kdcache.tools.bench import pagecache
from kdcache.tools.bench.reads import ReadStore, memmap_pass
from kdcache.tools.bench.rounds import interleave, spread
from kdcache.tools.bench.settings import BenchSettings

H5_CHUNK_ROWS = 512


class PeerFiles:
    """Figure 3's store and the same rows as ``.npy`` (the store's own twin), safetensors and HDF5 files."""

    def __init__(self, store: ReadStore) -> None:
        self.store = store
        rows = np.load(store.raw, mmap_mode="r")
        self.safetensors = store.raw.with_suffix(".safetensors")
        save_file({"logits": np.ascontiguousarray(rows)}, str(self.safetensors))
        self.h5 = store.raw.with_suffix(".h5")
        with h5py.File(self.h5, "w") as f:
            f.create_dataset("logits", data=rows, chunks=(H5_CHUNK_ROWS, *rows.shape[1:]))

    def files(self) -> list[Path]:
        return [*self.store.files(), self.safetensors, self.h5]

    def remove(self) -> None:
        self.safetensors.unlink(missing_ok=True)
        self.h5.unlink(missing_ok=True)


def uniform_batches(num_samples: int, batch: int, count: int, seed: int) -> list[np.ndarray]:
    """The first ``count`` batches of one uniform permutation of the samples."""
    order = np.random.default_rng(seed).permutation(num_samples)
    return [order[i : i + batch] for i in range(0, min(num_samples, batch * count), batch)]


def safetensors_memmap_pass(path: Path, batches: list[np.ndarray]) -> float:
    """Seconds to gather the rows from a numpy memmap of the safetensors file's data at its header's offset."""
    start = time.perf_counter()
    with open(path, "rb") as f:
        (size,) = struct.unpack("<Q", f.read(8))
        info = json.loads(f.read(size))["logits"]
    begin, _ = info["data_offsets"]
    mapped = np.memmap(path, dtype=np.float16, mode="r", offset=8 + size + begin, shape=tuple(info["shape"]))
    for rows in batches:
        np.take(mapped, rows, axis=0)
    seconds = time.perf_counter() - start
    del mapped
    return seconds


def safetensors_slice_pass(path: Path, batches: list[np.ndarray]) -> float:
    """Seconds to read the rows with safetensors' own ``get_slice`` (a slice per run of consecutive rows)."""
    start = time.perf_counter()
    with safe_open(str(path), framework="numpy") as f:
        tensor = f.get_slice("logits")
        for rows in batches:
            order = np.sort(rows)
            cuts = np.flatnonzero(np.diff(order) != 1) + 1
            np.concatenate([tensor[int(run[0]) : int(run[-1]) + 1] for run in np.split(order, cuts)])
    return time.perf_counter() - start


def h5py_pass(path: Path, batches: list[np.ndarray]) -> float:
    """Seconds to read the rows from HDF5 (h5py fancy indexing needs increasing rows: sorted, then put back)."""
    start = time.perf_counter()
    with h5py.File(path, "r") as f:
        data = f["logits"]
        for rows in batches:
            order = np.argsort(rows)
            out = np.empty((len(rows), *data.shape[1:]), dtype=data.dtype)
            out[order] = data[rows[order]]
    return time.perf_counter() - start


def kdcache_pass(store: ReadStore, batches: list[np.ndarray], *, in_ram: bool) -> float:
    """Seconds for kdcache's reader to gather the rows: in RAM, or streamed with its shards verified beforehand."""
    reader = store.in_ram() if in_ram else store.reader()
    if not in_ram:
        for index in range(reader.num_shards):
            reader.verify_shard(index)
    views = np.zeros(max(len(b) for b in batches), dtype=np.int64)
    start = time.perf_counter()
    for rows in batches:
        reader.read_rows(rows, views[: len(rows)])
    return time.perf_counter() - start


def measure_peers(workdir: Path, settings: BenchSettings, *, progress: bool = True) -> dict[str, Any]:
    """Samples/s of every format in B and U order (warm page cache), and each one's ratio to the numpy memmap."""
    store = ReadStore(workdir, settings.read_sizes[0], settings)
    peers = PeerFiles(store)
    orders = {
        "B": store.epochs[1][: settings.peer_batches],
        "U": uniform_batches(store.num_samples, settings.read_batch, settings.peer_batches, settings.seed),
    }
    try:
        figures = {
            order: _measure_order(store, peers, batches, settings, progress) for order, batches in orders.items()
        }
    finally:
        peers.remove()
        store.remove()
    return {
        "samples": store.num_samples,
        "bytes_per_sample": store.sample_bytes,
        "batch": settings.read_batch,
        "batches": settings.peer_batches,
        "orders": figures,
    }


def _measure_order(
    store: ReadStore, peers: PeerFiles, batches: list[np.ndarray], settings: BenchSettings, progress: bool
) -> dict[str, Any]:
    def warm(fn: Callable[[], float]) -> Callable[[], float]:
        def warmed() -> float:
            pagecache.warm(peers.files())
            return fn()

        return warmed

    variants = {
        "numpy memmap": warm(lambda: memmap_pass(store.raw, batches)),
        "safetensors, memmap at its offset": warm(lambda: safetensors_memmap_pass(peers.safetensors, batches)),
        "safetensors get_slice": warm(lambda: safetensors_slice_pass(peers.safetensors, batches)),
        f"h5py, {H5_CHUNK_ROWS}-row chunks": warm(lambda: h5py_pass(peers.h5, batches)),
        "kdcache, streamed": warm(lambda: kdcache_pass(store, batches, in_ram=False)),
        "kdcache, in RAM": warm(lambda: kdcache_pass(store, batches, in_ram=True)),
    }
    samples = interleave(variants, rounds=settings.read_rounds, warmup=settings.warmup, desc="fig 8", progress=progress)
    count = sum(len(b) for b in batches)
    return {
        name: {
            "samples_per_second": spread([count / s for s in samples.values[name]]),
            "ratio_to_memmap": samples.ratio("numpy memmap", name),
        }
        for name in variants
    }


#: What a GPU student consumes, on paper (not measured here: this machine has no GPU). Assumed step times of a
#: ResNet-18 student trained with mixed precision on one A100/H100-class GPU, the order of magnitude published
#: training throughputs give; the read rates above are set against them.
ASSUMED_GPU_STUDENTS = {
    "ResNet-18, 224×224, batch 256, assumed 40 ms/step": 256 / 0.040,
    "ResNet-18, 32×32, batch 512, assumed 20 ms/step": 512 / 0.020,
}
