"""Text for causal language models: local files, tokenized with a local tokenizer, packed into fixed-length sequences.

Documents come from plain text files (one document per file), JSON lines (one per line, field ``text_field``) or
Parquet files (one per row, column ``text_field``). Each document's tokens are followed by the separator (the EOS
token) and the documents of all files, in the order listed, form one token stream that is cut into sequences of
``seq_len`` tokens. Sample ``i`` is sequence ``i``: its inputs are stream tokens ``[i·L, (i+1)·L)`` and its labels the
tokens one step later, so every position has a next-token label, the last one included (it is the first token of the
next sequence). Only the final sequence can be short: it is padded with the pad token, and padded positions have
label ``ignore_index`` (and ``attention_mask`` 0), so losses and metrics skip them.

The dataset's description (what a store's fingerprint records) names every file with its SHA-256, the tokenizer's
fingerprint and the packing, so a store is refused for text tokenized or packed another way
(:func:`kdcache.train.require_token_alignment`).
"""

from __future__ import annotations

import hashlib
import json
import sysconfig
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from tqdm.auto import tqdm

from kdcache.datasets.base import SampleDataset
from kdcache.datasets.tokenizer import TOKENIZED_KINDS, load_tokenizer
from kdcache.errors import ConfigError

DocumentFormat = Literal["auto", "text", "jsonl", "parquet"]
IGNORE_INDEX = -100


class TextDataset(SampleDataset):
    """Token sequences of ``seq_len`` packed from local text files: inputs ``(B, L)`` int64 token ids and labels
    ``(B, L)`` int64 next tokens (``ignore_index`` where there is none).

    ``root`` (optional) is joined to every file name and may name a directory of :func:`sysconfig.get_paths` in
    braces, e.g. ``"{stdlib}"``; the description records the names as given, so a store built on one machine matches
    the same files elsewhere. ``sha256`` pins files to their digests: a file whose bytes differ is refused, not
    silently used.

    >>> train = TextDataset(["a.txt", "b.txt"], tokenizer="tokenizer.json", seq_len=128, split="train")  # doctest: +SKIP
    >>> inputs, labels = train.get_batch(np.arange(4))  # (4, 128) token ids and next-token labels
    """

    def __init__(
        self,
        files: Sequence[str],
        *,
        tokenizer: str | Path,
        seq_len: int,
        split: str = "train",
        root: str | None = None,
        format: DocumentFormat = "auto",
        text_field: str = "text",
        eos_token: str = "<|endoftext|>",
        pad_token: str | None = None,
        sha256: Mapping[str, str] | None = None,
        ignore_index: int = IGNORE_INDEX,
        progress: bool = False,
    ) -> None:
        if seq_len < 2:
            raise ConfigError(f"seq_len must be at least 2 tokens, got {seq_len}")
        if not files:
            raise ConfigError(f"split {split!r} lists no files; give at least one text, JSON lines or Parquet file")
        self.split = split
        self.seq_len = int(seq_len)
        self.ignore_index = ignore_index
        self.tokenizer = load_tokenizer(tokenizer)
        self.eos_id = self.tokenizer.token_id(eos_token, role="eos")
        self.pad_id = self.eos_id if pad_token is None else self.tokenizer.token_id(pad_token, role="pad")
        paths = [resolve_file(root, name) for name in files]
        digests = [file_sha256(p) for p in paths]
        check_pins(files, digests, sha256 or {})
        stream = token_stream(tuple(map(str, paths)), tuple(digests), str(self.tokenizer.path), format, text_field,
                              self.eos_id, progress)  # fmt: skip
        inputs, labels, lengths = pack(stream, seq_len=self.seq_len, pad_id=self.pad_id, ignore_index=ignore_index)
        self.inputs, self.labels = torch.from_numpy(inputs), torch.from_numpy(labels)
        self.lengths = lengths
        self.num_tokens = len(stream)
        self._source = {
            "kind": "text",
            "root": root,
            "files": [[name, digest] for name, digest in zip(files, digests, strict=True)],
            "format": format,
            "text_field": text_field,
            "tokenizer": self.tokenizer.fingerprint(),
            "packing": {
                "seq_len": self.seq_len,
                "separator": [self.eos_id, eos_token],
                "pad": [self.pad_id, pad_token or eos_token],
                "ignore_index": ignore_index,
                "documents": "files in the order listed, each followed by the separator",
                "stream_tokens": self.num_tokens,
            },
        }

    def __len__(self) -> int:
        return len(self.inputs)

    @property
    def vocab_size(self) -> int:
        """Token ids the tokenizer can produce; a model's vocabulary (logits width) must be at least this."""
        return self.tokenizer.vocab_size

    def get_batch(self, indices: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        index = torch.as_tensor(np.asarray(indices, dtype=np.int64))
        return self.inputs[index], self.labels[index]

    def attention_mask(self, indices: np.ndarray) -> torch.Tensor:
        """``(B, L)`` int64: 1 at real tokens, 0 at padding (what a Hugging Face model takes as ``attention_mask``)."""
        lengths = torch.as_tensor(self.lengths[np.asarray(indices, dtype=np.int64)])
        return (torch.arange(self.seq_len)[None, :] < lengths[:, None]).long()

    def describe(self) -> dict[str, Any]:
        return {**self._source, "split": self.split}

    def all_labels(self) -> np.ndarray:
        return self.labels.numpy()


def text_dataset(split: str, *, splits: Mapping[str, Sequence[str]], **options: Any) -> TextDataset:
    """The ``text`` dataset of pipeline files: ``splits`` maps each split name to its files; ``options`` are
    :class:`TextDataset`'s (``tokenizer``, ``seq_len``, ``root``, ``format``, ``sha256``, ...)."""
    if split not in splits:
        raise ConfigError(f"data.args.splits has no split {split!r}; it lists {sorted(splits)}")
    listed = {name for files in splits.values() for name in files}
    if unknown := sorted(set(options.get("sha256") or {}) - listed):
        raise ConfigError(f"data.args.sha256 pins files {unknown} that no split lists; pin only listed files")
    return TextDataset(list(splits[split]), split=split, **options)


def tokens_per_sample(source: Mapping[str, Any]) -> int | None:
    """Tokens per sample of a dataset from its description (a store's ``dataset.source``); None for non-text data."""
    packing = source.get("packing") if source.get("kind") in TOKENIZED_KINDS else None
    return None if packing is None else int(packing["seq_len"])


def resolve_file(root: str | None, name: str) -> Path:
    """``root/name``, with ``{stdlib}``-style names of :func:`sysconfig.get_paths` in ``root`` filled in."""
    if root is None:
        path = Path(name)
    else:
        try:
            path = Path(root.format(**sysconfig.get_paths())) / name
        except KeyError as exc:
            raise ConfigError(
                f"data root {root!r} names {exc}, which is not a sysconfig path; valid names: "
                f"{sorted(sysconfig.get_paths())}"
            ) from None
    if not path.is_file():
        raise ConfigError(f"text file {str(path)!r} does not exist; check data.args (root and the file list)")
    return path


def file_sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def check_pins(names: Sequence[str], digests: Sequence[str], pins: Mapping[str, str]) -> None:
    """Refuse files whose SHA-256 differs from the pinned one, naming the file and both digests (pins of files not
    listed here are for other splits)."""
    for name, digest in zip(names, digests, strict=True):
        if name in pins and pins[name] != digest:
            raise ConfigError(
                f"text file {name!r} has SHA-256 {digest[:16]}…, but the pipeline pins {pins[name][:16]}…: these are "
                "other bytes than the ones its figures were measured on (another Python version's standard library, "
                "or an edited file). Use the pinned files, or remove the pin to train on these (stores record them)"
            )


_STREAMS: dict[tuple[Any, ...], np.ndarray] = {}
_STREAMS_KEPT = 8


def token_stream(
    paths: tuple[str, ...],
    digests: tuple[str, ...],
    tokenizer: str,
    format: DocumentFormat,
    text_field: str,
    eos_id: int,
    progress: bool = False,
) -> np.ndarray:
    """Every document's token ids followed by ``eos_id``, in file order, as one int64 array (read-only).

    Kept per process by file digests and tokenizer file (the last few), since a pipeline builds its splits
    several times; other bytes under the same path are tokenized again.
    """
    key = (paths, digests, tokenizer, file_sha256(Path(tokenizer)), format, text_field, eos_id)
    if key in _STREAMS:
        return _STREAMS[key]
    local = load_tokenizer(tokenizer)
    pieces: list[np.ndarray] = []
    for path in tqdm(paths, desc="tokenize", unit="file", disable=not progress):
        for ids in local.encode(read_documents(Path(path), format, text_field)):
            pieces.append(np.asarray([*ids, eos_id], dtype=np.int64))
    stream = np.concatenate(pieces) if pieces else np.zeros(0, dtype=np.int64)
    stream.setflags(write=False)
    while len(_STREAMS) >= _STREAMS_KEPT:
        del _STREAMS[next(iter(_STREAMS))]
    _STREAMS[key] = stream
    return stream


def read_documents(path: Path, format: DocumentFormat, text_field: str) -> list[str]:
    """The documents of one file: the whole file (text), one per line (JSON lines), one per row (Parquet)."""
    kind = _format_of(path) if format == "auto" else format
    if kind == "text":
        return [path.read_text(encoding="utf-8")]
    if kind == "jsonl":
        return [_field(line, text_field, f"{path}:{n}") for n, line in _lines(path)]
    try:
        import pyarrow.parquet as pq
    except ImportError:
        raise ConfigError(
            "Parquet text needs pyarrow; install the language-model extra: pip install 'kdcache[lm]'"
        ) from None
    table = pq.read_table(path)
    if text_field not in table.column_names:
        raise ConfigError(f"{path} has no column {text_field!r}; columns: {table.column_names}. Set text_field")
    return [str(t) for t in table.column(text_field).to_pylist()]


def pack(
    stream: np.ndarray, *, seq_len: int, pad_id: int, ignore_index: int = IGNORE_INDEX
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Inputs ``(N, L)``, next-token labels ``(N, L)`` and real-token counts ``(N,)`` of a token stream cut into
    ``N = ceil((len - 1) / L)`` sequences (every sequence has at least one label); the last is padded."""
    if len(stream) < 2:
        raise ConfigError(f"the text holds {len(stream)} token(s); a language model needs at least 2")
    n = -(-(len(stream) - 1) // seq_len)
    inputs = np.full(n * seq_len, pad_id, dtype=np.int64)
    inputs[: min(len(stream), n * seq_len)] = stream[: n * seq_len]
    labels = np.full(n * seq_len, ignore_index, dtype=np.int64)
    labels[: len(stream) - 1] = stream[1:]
    lengths = np.clip(len(stream) - np.arange(n) * seq_len, 0, seq_len).astype(np.int64)
    return inputs.reshape(n, seq_len), labels.reshape(n, seq_len), lengths


def _format_of(path: Path) -> DocumentFormat:
    return {".jsonl": "jsonl", ".json": "jsonl", ".parquet": "parquet"}.get(path.suffix, "text")  # type: ignore[return-value]


def _lines(path: Path) -> list[tuple[int, str]]:
    text = path.read_text(encoding="utf-8")
    return [(n, line) for n, line in enumerate(text.splitlines(), start=1) if line.strip()]


def _field(line: str, field: str, where: str) -> str:
    try:
        record = json.loads(line)
    except json.JSONDecodeError as exc:
        raise ConfigError(f"{where}: not valid JSON ({exc}); JSON lines files hold one object per line") from None
    if not isinstance(record, dict) or not isinstance(record.get(field), str):
        raise ConfigError(f"{where}: expected a JSON object with a string field {field!r}. Set text_field")
    return record[field]
