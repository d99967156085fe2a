"""An on-disk cache of token streams: a corpus is tokenized once, and every later run or process maps the result.

A stream is stored as raw ids of the narrowest unsigned dtype that holds the vocabulary (``uint16`` up to 65,536
ids: 2 bytes a token instead of int64's 8), under a key that is a digest of what decides the ids — every source's
SHA-256 and format, the text field, the tokenizer's fingerprint and the separator. Beside it a JSON record names
the key, dtype, length and the SHA-256 of the stream's bytes; a stream is used only when its bytes hash to that
record (the file name is never trusted), otherwise it is tokenized again and rewritten. Writes go to a temporary
file that is renamed into place, stream first and record last, so a crash or a concurrent writer leaves either
nothing or a whole, verified pair.
"""

from __future__ import annotations

import hashlib
import json
import mmap
import os
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
from tqdm.auto import tqdm

from kdcache.atomic import atomic_file, atomic_write_text
from kdcache.datasets.corpus import source_sha256
from kdcache.fingerprint import canonical_digest

CACHE_VERSION = 1


def default_cache_dir() -> Path:
    """``$KDCACHE_TOKEN_CACHE`` if set, else ``$XDG_CACHE_HOME/kdcache/tokens`` (``~/.cache/kdcache/tokens`` where
    that is unset)."""
    if found := os.environ.get("KDCACHE_TOKEN_CACHE"):
        return Path(found)
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "kdcache" / "tokens"


def stream_dtype(vocab_size: int) -> np.dtype:
    """The narrowest unsigned dtype that holds every id below ``vocab_size``."""
    for dtype in (np.uint16, np.uint32):
        if vocab_size <= np.iinfo(dtype).max + 1:
            return np.dtype(dtype)
    return np.dtype(np.uint64)


def cached_stream(
    key_facts: dict[str, Any],
    chunks: Callable[[], Iterator[np.ndarray]],
    *,
    vocab_size: int,
    cache_dir: Path,
    progress: bool = False,
) -> np.ndarray:
    """The token stream ``chunks()`` yields, as a read-only memory map: the cached one when its bytes verify, else
    ``chunks()`` written to the cache first."""
    key = canonical_digest({"version": CACHE_VERSION, **key_facts})
    data, record = cache_dir / f"{key}.tokens", cache_dir / f"{key}.json"
    dtype = stream_dtype(vocab_size)
    found = _verified(data, record, key, dtype)
    if found is None:
        found = _write(data, record, key, dtype, chunks(), progress)
    return np.empty(0, dtype=dtype) if found == 0 else map_stream(data, dtype, found)


def map_stream(path: Path, dtype: np.dtype, length: int) -> np.ndarray:
    """The first ``length`` ids of ``path``, a read-only memory map whose pages :func:`release_pages` can drop."""
    with path.open("rb") as f:
        mapped = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
    return np.frombuffer(mapped, dtype=dtype, count=length)


def release_pages(stream: np.ndarray) -> None:
    """Unmap from this process the pages of ``stream`` read so far (a map from :func:`map_stream`; other arrays are
    left alone). They stay in the page cache and a later read maps them again at a minor fault, but they no longer
    count in this process's RSS: without this, every page an epoch touched stays resident (``RssFile``), so the peak
    RSS of stage one and stage two would grow by 2 bytes per token of the corpus."""
    mapped = getattr(stream.base, "obj", None)
    if isinstance(mapped, mmap.mmap) and hasattr(mmap, "MADV_DONTNEED"):
        mapped.madvise(mmap.MADV_DONTNEED)


def _verified(data: Path, record: Path, key: str, dtype: np.dtype) -> int | None:
    """The token count of a cached stream whose record matches and whose bytes hash to it; None if there is none or
    it does not verify (then it is rebuilt, with a warning)."""
    if not record.is_file():
        return None
    try:
        facts = json.loads(record.read_text())
        length = int(facts["length"])
        expected: tuple[Any, ...] = (facts["key"], facts["dtype"], facts["sha256"])
    except (ValueError, KeyError, TypeError):
        facts, length, expected = {}, -1, ()
    actual: tuple[Any, ...] = (key, dtype.name, source_sha256(data)) if data.is_file() else ()
    if expected == actual and data.stat().st_size == length * dtype.itemsize:
        return length
    warnings.warn(
        f"token cache {str(data)!r} does not match its record {str(record)!r}; tokenizing again", stacklevel=3
    )
    return None


def _write(data: Path, record: Path, key: str, dtype: np.dtype, chunks: Iterator[np.ndarray], progress: bool) -> int:
    data.parent.mkdir(parents=True, exist_ok=True)
    digest, length = hashlib.sha256(), 0
    with (
        atomic_file(data) as out,
        tqdm(desc="tokenize", unit="tok", unit_scale=True, disable=not progress) as bar,
    ):
        for chunk in chunks:
            raw = chunk.astype(dtype).tobytes()
            out.write(raw)
            digest.update(raw)
            length += len(chunk)
            bar.update(len(chunk))
    facts = {"key": key, "dtype": dtype.name, "length": length, "sha256": digest.hexdigest()}
    atomic_write_text(record, json.dumps(facts, sort_keys=True))
    return length
