"""The files of a text corpus as language-model users have them, read as a stream of token-id chunks.

A file list may name plain files, globs (``"shards/*.jsonl.zst"``, ``**`` recursive) and directories (every
non-hidden file under them); both are expanded in sorted order into the concrete files, which the dataset
description records with their SHA-256, so a fingerprint is by content. A directory written by ``datasets``'
``save_to_disk`` is one source, not expanded. What each file holds is told by its name (or ``format``):

- plain text (one document per file), JSON lines (``.jsonl``/``.json``, one document per line, field
  ``text_field``), either of them compressed as ``.gz`` (stdlib) or ``.zst`` (``zstandard``);
- Parquet (``.parquet``) and Arrow (``.arrow`` files or a ``save_to_disk`` directory): one document per row, column
  ``text_field``;
- pre-tokenized ``.npy`` token ids: a 1-D stream (separators included, used as is) or 2-D packed sequences of
  ``seq_len`` (used as their concatenation), checked against the tokenizer's vocabulary.

Documents are streamed (never a whole corpus in a list) and tokenized in batches; bytes that are not UTF-8 are
refused naming the file and the byte offset.
"""

from __future__ import annotations

import glob
import gzip
import hashlib
import io
import json
import sysconfig
from collections.abc import Iterator, Sequence
from itertools import chain
from pathlib import Path
from typing import Any, Literal

import numpy as np

from kdcache.datasets.tokenizer import LocalTokenizer
from kdcache.errors import ConfigError

DocumentFormat = Literal["auto", "text", "jsonl", "parquet", "arrow", "tokens"]
COMPRESSIONS = (".gz", ".zst")
DATASETS_MARKERS = ("state.json", "dataset_info.json", "dataset_dict.json")
"""Files that ``datasets``' ``save_to_disk`` writes into a dataset directory."""
BATCH_DOCUMENTS = 512
BATCH_CHARS = 1 << 20
"""A tokenizer batch ends at this many documents or characters, whichever comes first: memory stays bounded by a
batch, and ``encode_batch`` still has enough work to spread over its threads."""
TOKEN_CHUNK = 1 << 22
LM_EXTRA = "pip install 'kdcache[lm]'"


def root_directory(root: str | None) -> Path | None:
    """``root`` with ``{stdlib}``-style names of :func:`sysconfig.get_paths` filled in (None: names are paths)."""
    if root is None:
        return None
    try:
        return Path(root.format(**sysconfig.get_paths()))
    except KeyError as exc:
        raise ConfigError(
            f"data root {root!r} names {exc}, which is not a sysconfig path; valid names: {sorted(sysconfig.get_paths())}"
        ) from None


def expand_files(names: Sequence[str], root: str | None) -> list[tuple[str, Path]]:
    """``(name, path)`` of every concrete source the list names: globs and directories expanded in sorted order,
    names relative to ``root`` (when given) so a description matches the same files on another machine."""
    base = root_directory(root)
    found: list[tuple[str, Path]] = []
    for name in names:
        matches = [name]
        if any(c in name for c in "*?["):
            matches = sorted(glob.glob(name, root_dir=base, recursive=True))
            if not matches:
                where = "" if base is None else f" under {str(base)!r}"
                raise ConfigError(f"the glob {name!r} matches no file{where}; check data.args (root and the file list)")
        for match in matches:
            found.extend(_expand_one(match, base / match if base is not None else Path(match)))
    return found


def _expand_one(name: str, path: Path) -> list[tuple[str, Path]]:
    if path.is_file() or is_datasets_directory(path):
        return [(name, path)]
    if not path.is_dir():
        raise ConfigError(f"text file {str(path)!r} does not exist; check data.args (root and the file list)")
    inside = sorted(rel for rel in (p.relative_to(path) for p in path.rglob("*") if p.is_file()) if not _hidden(rel))
    if not inside:
        raise ConfigError(f"the directory {str(path)!r} holds no files; give one that holds the corpus")
    return [(f"{name.rstrip('/')}/{rel.as_posix()}", path / rel) for rel in inside]


def _hidden(relative: Path) -> bool:
    return any(part.startswith(".") for part in relative.parts)


def is_datasets_directory(path: Path) -> bool:
    return path.is_dir() and any((path / marker).is_file() for marker in DATASETS_MARKERS)


def source_sha256(path: Path) -> str:
    """SHA-256 of a file's bytes; of a ``save_to_disk`` directory, over each file's name and SHA-256 in order."""
    if not path.is_dir():
        with path.open("rb") as f:
            return hashlib.file_digest(f, "sha256").hexdigest()
    listing = sorted((p.relative_to(path).as_posix(), source_sha256(p)) for p in path.rglob("*") if p.is_file())
    return hashlib.sha256(json.dumps(listing).encode()).hexdigest()


def format_of(path: Path, format: DocumentFormat) -> DocumentFormat:
    """What ``path`` holds: ``format`` unless "auto", else told by the name (compression suffixes aside)."""
    if format != "auto":
        return format
    if path.is_dir():
        return "arrow"
    suffixes = [s for s in path.suffixes if s not in COMPRESSIONS] if path.suffix in COMPRESSIONS else [path.suffix]
    kinds: dict[str, DocumentFormat] = {
        ".jsonl": "jsonl",
        ".json": "jsonl",
        ".parquet": "parquet",
        ".arrow": "arrow",
        ".npy": "tokens",
    }
    return kinds.get(suffixes[-1] if suffixes else "", "text")


def token_chunks(
    path: Path, kind: DocumentFormat, *, text_field: str, tokenizer: LocalTokenizer, eos_id: int, seq_len: int
) -> Iterator[np.ndarray]:
    """The token ids of one source as int64 chunks: its documents tokenized in batches, each followed by
    ``eos_id``, or its pre-tokenized ids checked against the vocabulary."""
    if kind == "tokens":
        yield from _pretokenized(path, tokenizer.vocab_size, seq_len)
        return
    for batch in _batches(documents(path, kind, text_field)):
        ids = tokenizer.encode(batch)
        yield np.fromiter(chain.from_iterable(chain(i, (eos_id,)) for i in ids), dtype=np.int64)


def documents(path: Path, kind: DocumentFormat, text_field: str) -> Iterator[str]:
    """The documents of one source, one at a time."""
    if kind == "text":
        with open_bytes(path) as f:
            yield decode(f.read(), path, 0)
    elif kind == "jsonl":
        yield from _json_lines(path, text_field)
    elif kind in ("parquet", "arrow"):
        for column in _columns(path, kind, text_field):
            yield from (str(t) for t in column.to_pylist())
    else:
        raise ConfigError(f"format {kind!r} is not one of auto, text, jsonl, parquet, arrow, tokens")


def open_bytes(path: Path) -> io.BufferedIOBase:
    """A binary reader of ``path``'s bytes, decompressed when the name ends in ``.gz`` or ``.zst``."""
    if path.suffix == ".gz":
        return gzip.open(path, "rb")
    if path.suffix != ".zst":
        return path.open("rb")
    try:
        import zstandard
    except ImportError:
        raise ConfigError(f"{str(path)!r} is zstd-compressed, which needs `zstandard`; {LM_EXTRA}") from None
    return io.BufferedReader(zstandard.ZstdDecompressor().stream_reader(path.open("rb"), closefd=True))


def decode(data: bytes, path: Path, offset: int) -> str:
    """``data`` as UTF-8; bytes that are not name the file and the offset of the first bad byte in it."""
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        where = "decompressed byte" if path.suffix in COMPRESSIONS else "byte"
        raise ConfigError(
            f"{str(path)!r} is not UTF-8 text: {where} offset {offset + exc.start} is {data[exc.start : exc.start + 1]!r} "
            f"({exc.reason}). Re-encode the file as UTF-8 (e.g. iconv -t utf-8) or leave it out"
        ) from None


def _json_lines(path: Path, field: str) -> Iterator[str]:
    offset = 0
    with open_bytes(path) as f:
        for number, raw in enumerate(f, start=1):
            line = decode(raw, path, offset)
            offset += len(raw)
            if line.strip():
                yield _field(line, field, f"{path}:{number}")


def _field(line: str, field: str, where: str) -> str:
    try:
        record = json.loads(line)
    except json.JSONDecodeError as exc:
        raise ConfigError(f"{where}: not valid JSON ({exc}); JSON lines files hold one object per line") from None
    if not isinstance(record, dict) or not isinstance(record.get(field), str):
        raise ConfigError(f"{where}: expected a JSON object with a string field {field!r}. Set text_field")
    return record[field]


def _columns(path: Path, kind: DocumentFormat, field: str) -> Iterator[Any]:
    """Column ``field`` of a Parquet file, an Arrow file or a ``save_to_disk`` directory, a record batch at a time."""
    try:
        import pyarrow as pa
        import pyarrow.parquet as pq
    except ImportError:
        raise ConfigError(f"{kind.capitalize()} text needs pyarrow; {LM_EXTRA}") from None
    if path.is_dir():
        yield from _saved_dataset(path, field)
        return
    if kind == "parquet":
        parquet = pq.ParquetFile(path)
        _require_column(path, field, parquet.schema_arrow.names)
        yield from (b.column(field) for b in parquet.iter_batches(batch_size=BATCH_DOCUMENTS, columns=[field]))
        return
    with pa.memory_map(str(path)) as source:
        try:
            reader = pa.ipc.open_stream(source)  # what datasets writes
        except pa.ArrowInvalid:
            reader = pa.ipc.open_file(source)
        _require_column(path, field, reader.schema.names)
        batches = (
            reader
            if isinstance(reader, pa.ipc.RecordBatchStreamReader)
            else (reader.get_batch(i) for i in range(reader.num_record_batches))
        )
        yield from (b.column(field) for b in batches)


def _saved_dataset(path: Path, field: str) -> Iterator[Any]:
    try:
        import datasets
    except ImportError:
        raise ConfigError(f"{str(path)!r} is a `datasets` directory, which needs `datasets`; {LM_EXTRA}") from None
    saved = datasets.load_from_disk(str(path))
    if isinstance(saved, datasets.DatasetDict):
        raise ConfigError(
            f"{str(path)!r} holds the splits {sorted(saved)}; name one split's directory, e.g. {str(path / next(iter(saved)))!r}"
        )
    _require_column(path, field, saved.column_names)
    for table in saved.select_columns([field]).with_format("arrow").iter(batch_size=BATCH_DOCUMENTS):
        yield table.column(field)


def _require_column(path: Path, field: str, columns: list[str]) -> None:
    if field not in columns:
        raise ConfigError(f"{path} has no column {field!r}; columns: {columns}. Set text_field")


def _batches(texts: Iterator[str]) -> Iterator[list[str]]:
    batch: list[str] = []
    chars = 0
    for text in texts:
        batch.append(text)
        chars += len(text)
        if len(batch) >= BATCH_DOCUMENTS or chars >= BATCH_CHARS:
            yield batch
            batch, chars = [], 0
    if batch:
        yield batch


def _pretokenized(path: Path, vocab_size: int, seq_len: int) -> Iterator[np.ndarray]:
    """The ids of a ``.npy`` file, a chunk at a time from a memory map, each checked to be in ``[0, vocab_size)``."""
    try:
        ids = np.load(path, mmap_mode="r", allow_pickle=False)
    except ValueError as exc:
        raise ConfigError(f"{str(path)!r} is not a .npy array of token ids: {exc}") from None
    if not np.issubdtype(ids.dtype, np.integer) or ids.ndim not in (1, 2):
        raise ConfigError(
            f"{str(path)!r} holds a {ids.ndim}-D {ids.dtype} array; pre-tokenized input is integer token ids, a 1-D "
            "stream or 2-D packed sequences"
        )
    if ids.ndim == 2 and ids.shape[1] != seq_len:
        raise ConfigError(
            f"{str(path)!r} holds sequences of {ids.shape[1]} tokens, but seq_len is {seq_len}; set seq_len to "
            f"{ids.shape[1]} or give the ids as a 1-D stream"
        )
    flat = ids.reshape(-1)
    for start in range(0, len(flat), TOKEN_CHUNK):
        chunk = np.asarray(flat[start : start + TOKEN_CHUNK], dtype=np.int64)
        if len(chunk) and (int(chunk.min()) < 0 or int(chunk.max()) >= vocab_size):
            bad = start + int(np.flatnonzero((chunk < 0) | (chunk >= vocab_size))[0])
            raise ConfigError(
                f"{str(path)!r} holds token id {int(flat[bad])} at position {bad}, outside the tokenizer's vocabulary "
                f"[0, {vocab_size}); these ids were made by another tokenizer: use that one, or re-tokenize the text"
            )
        yield chunk
