"""The corpus-at-scale bench on a CI-sized corpus: every step runs, and counts every token of the corpus exactly."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

from tokenizers import Tokenizer

from kdcache.tools.bench.scale import READ_BATCH, SEQ_LEN, VOCAB, measure


def corpus_tokens(directory: Path, tokenizer: Path) -> int:
    """Tokens of the shards counted apart from kdcache: each document's ids plus its separator."""
    bpe = Tokenizer.from_file(str(tokenizer))
    total = 0
    for shard in sorted(directory.glob("*.jsonl.gz")):
        with gzip.open(shard, "rt", encoding="utf-8") as lines:
            total += sum(len(bpe.encode(json.loads(line)["text"], add_special_tokens=False).ids) + 1 for line in lines)
    return total


def test_scale_bench_counts_every_token_and_measures_each_step(tmp_path) -> None:
    result = measure(tmp_path, 20_000, keep=True)
    tokens = corpus_tokens(tmp_path / "size-20000" / "corpus", tmp_path / f"bpe-{VOCAB}.json")
    assert 15_000 < tokens < 40_000  # the estimate of characters per token is close
    assert result["stream_tokens"] == tokens
    sequences = -(-(tokens - 1) // SEQ_LEN)
    assert result["sequences"] == sequences
    for step in ("tokenize", "stage_one", "stage_two", "memmap"):
        assert result[step]["tokens"] == tokens, step
        assert result[step]["seconds"] > 0 and result[step]["tokens_per_second"] > 0
        end = result[step]["end"]
        assert end["VmHWM"] >= end["VmRSS"] > 0 and end["RssAnon"] > 0 and end["RssFile"] > 0
        assert end["VmHWM"] >= result[step]["baseline"]["VmRSS"]
    assert result["stage_two"]["labelled_tokens"] == tokens - 1  # every position but the last has a next token
    assert result["stage_two"]["batches"] == -(-sequences // READ_BATCH)
    assert 0 < result["store_bytes_per_token"] < 1000  # 8 sampled ids and counts: 24 B laid out, plus the checks
    assert result["token_cache_bytes"] >= 2 * tokens  # uint16 ids and the record beside them
    assert result["stage_two_to_memmap"] > 0
