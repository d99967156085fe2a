"""A language-model corpus at scale: peak memory and rates of tokenizing, stage one and stage two at two sizes.

The corpus is local text every machine with kdcache has: the Python sources of the standard library and of the
installed packages (sorted, each at most 256 KiB, cycled until the estimated token count is reached), written as
gzip JSON lines shards into the work directory. A byte-level BPE of 320 ids is trained here on the first standard
library sources (deterministic; a small vocabulary keeps the per-token encoding of stage one cheap, so 100M tokens
fit in minutes on two cores). Each step runs in a fresh process, so its peak RSS is its own:

1. tokenize: the :class:`~kdcache.datasets.TextDataset` build that writes the token cache;
2. stage one: :func:`kdcache.precompute` of a 1-block, 32-wide GPT-2 (built from its config, seeded, untrained:
   only its cost matters) caching 8 sampled tokens per position over every token of the corpus;
3. stage two: :class:`~kdcache.train.CachedTokenDataset` with :func:`~kdcache.train.batch_loader` reading every batch
   of one epoch (targets streamed from the store, ``ram_budget_bytes=0``; no student step);
4. memmap: the same batches gathered with numpy from a memory map of the token stream and ``.npy`` copies of the
   store's target arrays (no checks), the reference for stage two's rate.

Peak RSS is the kernel's ``VmHWM`` of the step's process (anonymous and file-backed pages together); ``RssAnon`` and
``RssFile`` of ``/proc/self/status`` at the end of each step say which kind a difference between sizes is made of (a
memory map's pages count as ``RssFile`` while mapped). ``getrusage``'s ``ru_maxrss`` is recorded too, but it is not
the step's own: Linux carries the high-water mark of the process that forked the child across ``exec``, so it reads
at least the parent's peak.

    nice -n 10 env OMP_NUM_THREADS=1 python -m kdcache.tools.bench.scale --tokens 12.5e6 100e6 --workdir /tmp/kdscale
"""

from __future__ import annotations

import argparse
import json
import resource
import shutil
import subprocess
import sys
import sysconfig
import time
from pathlib import Path
from typing import Any

import numpy as np

from kdcache.tools.bench import corpus
from kdcache.tools.bench.corpus import MAX_DOCUMENT_BYTES, sources, train_tokenizer

SEQ_LEN = 1024
VOCAB = 320
STAGE_ONE_BATCH = 64
READ_BATCH = 32
TEACHER = "gpt2-1x32"
TARGET = {"encoding": "sampled", "samples": 8}
TARGET_NAME = "token_logits_sampled"
TEACHER_CONFIG = {
    "model_type": "gpt2",
    "n_layer": 1,
    "n_embd": 32,
    "n_head": 2,
    "n_positions": SEQ_LEN,
    "bos_token_id": 0,
    "eos_token_id": 0,
}
STATUS_FIELDS = ("VmHWM", "VmRSS", "RssAnon", "RssFile")


def local_sources() -> list[Path]:
    """The ``.py`` files of the standard library and of the installed packages (at most 256 KiB each), sorted."""
    roots = sorted({sysconfig.get_paths()[k] for k in ("stdlib", "purelib", "platlib")})
    found = sorted({p for root in roots for p in Path(root).rglob("*.py")})
    return [p for p in found if p.is_file() and p.stat().st_size <= MAX_DOCUMENT_BYTES]


def write_corpus(directory: Path, tokenizer: Path, tokens: int) -> list[Path]:
    """Gzip JSON lines shards of :func:`local_sources`, cycled until the estimated token count reaches ``tokens``."""
    return corpus.write_corpus(directory, tokenizer, tokens, files=local_sources(), compress=True)


def process_memory() -> dict[str, int]:
    """This process's ``ru_maxrss`` and the ``/proc/self/status`` fields of :data:`STATUS_FIELDS`, bytes."""
    found = {"ru_maxrss": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024}
    status = Path("/proc/self/status")
    for line in status.read_text().splitlines() if status.exists() else []:
        name, _, value = line.partition(":")
        if name in STATUS_FIELDS:
            found[name] = int(value.split()[0]) * 1024
    return found


def _text(spec: dict[str, Any]) -> Any:
    from kdcache.datasets import TextDataset

    return TextDataset([spec["glob"]], tokenizer=spec["tokenizer"], seq_len=SEQ_LEN, cache_dir=spec["cache"])


def tokenize_step(spec: dict[str, Any]) -> dict[str, Any]:
    """Build the dataset with an empty token cache: it streams the shards through the tokenizer to disk."""
    from kdcache.datasets.tokenizer import load_tokenizer

    load_tokenizer(spec["tokenizer"])
    baseline = process_memory()
    start = time.perf_counter()
    data = _text(spec)
    return {
        "seconds": time.perf_counter() - start,
        "tokens": data.num_tokens,
        "sequences": len(data),
        "baseline": baseline,
    }


def stage_one_step(spec: dict[str, Any]) -> dict[str, Any]:
    """Stage one over every sequence of the corpus into a new store."""
    import torch

    from kdcache.models import CausalLM
    from kdcache.precompute import precompute
    from kdcache.targets import build_target
    from kdcache.views import TokenViews

    torch.set_num_threads(1)
    data = _text(spec)
    torch.manual_seed(0)
    teacher = CausalLM(data.vocab_size, config=TEACHER_CONFIG)
    baseline = process_memory()
    start = time.perf_counter()
    precompute(
        teacher,
        data,
        spec["store"],
        targets=[build_target("token_logits", TARGET)],
        views=TokenViews(),
        num_classes=data.vocab_size,
        teacher_name=TEACHER,
        batch_size=STAGE_ONE_BATCH,
        progress=False,
    )
    return {"seconds": time.perf_counter() - start, "tokens": data.num_tokens, "baseline": baseline}


def stage_two_step(spec: dict[str, Any]) -> dict[str, Any]:
    """Every batch of one epoch through CachedTokenDataset and batch_loader; saves the batch order for the memmap."""
    import torch

    from kdcache.store import open_store
    from kdcache.train import CachedTokenDataset, batch_loader
    from kdcache.train.loader import set_loader_epoch

    torch.set_num_threads(1)
    data = _text(spec)
    baseline = process_memory()
    start = time.perf_counter()
    train = CachedTokenDataset(
        data,
        open_store(spec["store"]),
        teacher=TEACHER,
        targets=[TARGET_NAME],
        vocab_size=data.vocab_size,
        ram_budget_bytes=0,
    )
    loader = batch_loader(train, batch_size=READ_BATCH, seed=0)
    set_loader_epoch(loader, 0)
    order, labelled, real = [], 0, 0
    for batch in loader:
        order.append(batch.indices.numpy().copy())
        labelled += int((batch.labels != data.ignore_index).sum())
        real += int(data.lengths[batch.indices.numpy()].sum())
    seconds = time.perf_counter() - start
    np.save(spec["order"], np.concatenate(order))
    return {
        "seconds": seconds,
        "tokens": real,
        "labelled_tokens": labelled,
        "batches": len(order),
        "baseline": baseline,
    }


def memmap_step(spec: dict[str, Any]) -> dict[str, Any]:
    """The same batches gathered with numpy: token sequences from the stream's map, target rows from ``.npy`` maps."""
    from kdcache.datasets.text import sequences

    data = _text(spec)
    order = np.load(spec["order"])
    baseline = process_memory()
    start = time.perf_counter()
    arrays = {name: np.load(path, mmap_mode="r") for name, path in spec["export"].items()}
    real = 0
    for lo in range(0, len(order), READ_BATCH):
        rows = np.sort(order[lo : lo + READ_BATCH])
        sequences(data.stream, rows, seq_len=SEQ_LEN, pad_id=data.pad_id)
        for array in arrays.values():
            np.take(array, rows, axis=0)
        real += int(data.lengths[rows].sum())
    return {"seconds": time.perf_counter() - start, "tokens": real, "baseline": baseline}


STEPS = {"tokenize": tokenize_step, "stage_one": stage_one_step, "stage_two": stage_two_step, "memmap": memmap_step}


def run_step(step: str, spec: dict[str, Any]) -> dict[str, Any]:
    """``step`` in a fresh process; its result with the process's memory at the end (``end``)."""
    done = subprocess.run(
        [sys.executable, "-m", "kdcache.tools.bench.scale", "--child", step, json.dumps(spec)],
        capture_output=True,
        text=True,
    )
    if done.returncode != 0:
        raise RuntimeError(f"bench step {step!r} failed:\n{done.stderr[-4000:]}")
    result = json.loads(done.stdout.strip().splitlines()[-1])
    result["tokens_per_second"] = result["tokens"] / result["seconds"]
    return result


def export_targets(store: Path, directory: Path) -> dict[str, str]:
    """The store's target arrays as plain ``.npy`` files (read with zarr a chunk of rows at a time)."""
    import zarr

    found = {}
    for name in ("ids", "counts"):
        array = zarr.open_array(str(store / "teachers" / TEACHER / TARGET_NAME / name), mode="r")
        path = directory / f"{name}.npy"
        out = np.lib.format.open_memmap(path, mode="w+", dtype=array.dtype, shape=array.shape)
        step = array.chunks[0]
        for lo in range(0, array.shape[0], step):
            out[lo : lo + step] = array[lo : lo + step]
        out.flush()
        del out
        found[name] = str(path)
    return found


def directory_bytes(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def measure(workdir: Path, tokens: int, *, keep: bool = False) -> dict[str, Any]:
    """Every step at one corpus size; the store and the exported arrays are deleted afterwards unless ``keep``."""
    tokenizer = workdir / f"bpe-{VOCAB}.json"
    if not tokenizer.exists():
        train_tokenizer(tokenizer, sources(), vocab_size=VOCAB)
    here = workdir / f"size-{tokens}"
    shutil.rmtree(here, ignore_errors=True)
    shards = write_corpus(here / "corpus", tokenizer, tokens)
    spec: dict[str, str | dict[str, str]] = {  # the JSON each step's process is given
        "glob": str(here / "corpus" / "*.jsonl.gz"),
        "tokenizer": str(tokenizer),
        "cache": str(here / "cache"),
        "store": str(here / "store.zarr"),
        "order": str(here / "order.npy"),
    }
    steps = {"tokenize": run_step("tokenize", spec), "stage_one": run_step("stage_one", spec)}
    store_bytes = directory_bytes(here / "store.zarr")
    steps["stage_two"] = run_step("stage_two", spec)
    spec["export"] = export_targets(here / "store.zarr", here)
    steps["memmap"] = run_step("memmap", spec)
    stream = steps["tokenize"]["tokens"]
    result = {
        "stream_tokens": stream,
        "sequences": steps["tokenize"]["sequences"],
        "corpus_bytes": sum(p.stat().st_size for p in shards),
        "shards": len(shards),
        "store_bytes": store_bytes,
        "store_bytes_per_token": store_bytes / stream,
        "token_cache_bytes": directory_bytes(here / "cache"),
        "stage_two_to_memmap": steps["stage_two"]["tokens_per_second"] / steps["memmap"]["tokens_per_second"],
        **steps,
    }
    if not keep:
        shutil.rmtree(here, ignore_errors=True)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--tokens", type=float, nargs="+", default=[12.5e6, 100e6], help="corpus sizes in tokens")
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/kdscale"), help="where corpora and stores go")
    parser.add_argument("--keep", action="store_true", help="keep each size's corpus, token cache and store")
    parser.add_argument("--child", nargs=2, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        step, spec = args.child
        result = STEPS[step](json.loads(spec))
        print(json.dumps({**result, "end": process_memory()}))
        return
    args.workdir.mkdir(parents=True, exist_ok=True)
    results = {}
    for tokens in args.tokens:
        results[int(tokens)] = measure(args.workdir, int(tokens), keep=args.keep)
        print(json.dumps({int(tokens): results[int(tokens)]}), flush=True)
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
