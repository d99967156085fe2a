"""Peak memory and tokenization rate of building a :class:`~kdcache.datasets.TextDataset` over a generated corpus.

The corpus is the standard library's Python sources, cycled into JSON lines shards (one document per source file of at most 256 KiB)
until it holds about ``--tokens`` tokens of a byte-level BPE trained here on a slice of the same sources (nothing is
downloaded). Each build runs in a fresh process, so its peak RSS (``VmHWM``) is its own: first with an empty token
cache (it tokenizes), then again (it maps the cached stream).

    python -m kdcache.tools.bench.corpus --tokens 5e6 40e6 --workdir /tmp/corpus-bench
"""

from __future__ import annotations

import argparse
import gzip
import json
import shutil
import subprocess
import sys
import sysconfig
import time
from pathlib import Path
from typing import Any

import numpy as np

from kdcache.tools.bench.memory import _peak_rss_bytes

SHARD_DOCUMENTS = 2000
SEQ_LEN = 1024
MAX_DOCUMENT_BYTES = 256 << 10
"""Larger sources are left out: a tokenizer's working memory is per document (a 4 MB one takes ~0.6 GB in
``tokenizers``), so one outlier would measure that document, not the corpus's size."""


def sources() -> list[Path]:
    found = sorted(Path(sysconfig.get_paths()["stdlib"]).rglob("*.py"))
    return [f for f in found if f.stat().st_size <= MAX_DOCUMENT_BYTES]


def train_tokenizer(path: Path, files: list[Path], vocab_size: int = 8192) -> Path:
    """A byte-level BPE of ``vocab_size`` ids (8,192 by default: uint16 on disk) trained on the first sources."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=["<|endoftext|>"],
        show_progress=False,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    tokenizer.train([str(f) for f in files[:300]], trainer)
    tokenizer.save(str(path))
    return path


def write_corpus(
    directory: Path, tokenizer: Path, tokens: int, *, files: list[Path] | None = None, compress: bool = False
) -> list[Path]:
    """JSON lines shards of ``files`` (default: stdlib sources), cycled until the estimated token count reaches
    ``tokens``; gzip-compressed (``.jsonl.gz``) with ``compress``."""
    from tokenizers import Tokenizer

    files = sources() if files is None else files
    stride = 25 if compress is False else max(1, len(files) // 200)  # the sample that estimates characters per token
    sample = "".join(f.read_text(errors="replace") for f in files[::stride])
    chars_per_token = len(sample) / len(Tokenizer.from_file(str(tokenizer)).encode(sample).ids)
    directory.mkdir(parents=True, exist_ok=True)
    shards: list[Path] = []
    budget, n = tokens * chars_per_token, 0
    while budget > 0:
        shards.append(directory / f"shard-{len(shards):04d}.jsonl{'.gz' if compress else ''}")
        with (
            gzip.open(shards[-1], "wt", compresslevel=1, encoding="utf-8") if compress else shards[-1].open("w")
        ) as out:
            for _ in range(SHARD_DOCUMENTS):
                text = files[n % len(files)].read_text(errors="replace")
                out.write(json.dumps({"text": text}) + "\n")
                budget, n = budget - len(text), n + 1
                if budget <= 0:
                    break
    return shards


def build(spec: dict[str, Any]) -> dict[str, Any]:
    """One build in this process: seconds, stream tokens and peak RSS."""
    from kdcache.datasets import TextDataset
    from kdcache.datasets.tokenizer import load_tokenizer

    load_tokenizer(spec["tokenizer"])
    baseline = _peak_rss_bytes()  # the interpreter, torch and the tokenizer: what any build holds
    start = time.perf_counter()
    data = TextDataset([spec["glob"]], tokenizer=spec["tokenizer"], seq_len=SEQ_LEN, cache_dir=spec["cache"])
    data.get_batch(np.array([0, len(data) - 1], dtype=np.int64))
    return {
        "seconds": time.perf_counter() - start,
        "tokens": data.num_tokens,
        "peak_rss_bytes": _peak_rss_bytes(),
        "baseline_rss_bytes": baseline,
    }


def measure(workdir: Path, tokens: int) -> dict[str, Any]:
    tokenizer = workdir / "tokenizer.json"
    if not tokenizer.exists():
        train_tokenizer(tokenizer, sources())
    corpus = workdir / f"corpus-{tokens}"
    write_corpus(corpus, tokenizer, tokens)
    shutil.rmtree(workdir / f"cache-{tokens}", ignore_errors=True)
    spec = {"glob": str(corpus / "*.jsonl"), "tokenizer": str(tokenizer), "cache": str(workdir / f"cache-{tokens}")}
    runs = {}
    for name in ("tokenize", "cached"):
        done = subprocess.run(
            [sys.executable, "-m", "kdcache.tools.bench.corpus", "--child", json.dumps(spec)],
            capture_output=True,
            text=True,
            check=True,
        )
        runs[name] = json.loads(done.stdout.strip().splitlines()[-1])
    runs["tokens_per_second"] = runs["tokenize"]["tokens"] / runs["tokenize"]["seconds"]
    return runs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--tokens", type=float, nargs="+", default=[5e6, 40e6], help="corpus sizes (default: 5e6 40e6)")
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/kdcache-corpus-bench"), help="where corpora go")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(build(json.loads(args.child))))
        return
    args.workdir.mkdir(parents=True, exist_ok=True)
    print(json.dumps({int(t): measure(args.workdir, int(t)) for t in args.tokens}, indent=2))


if __name__ == "__main__":
    main()
