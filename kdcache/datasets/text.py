"""Text for causal language models: local corpora, tokenized once with a local tokenizer, packed into fixed-length
sequences.

Documents come from the sources :mod:`kdcache.datasets.corpus` reads (text, JSON lines, Parquet, Arrow and
``datasets`` directories, ``.gz``/``.zst`` compressed, globs and directories, or pre-tokenized ``.npy`` ids). Each
document's tokens are followed by the separator (the EOS token) and the documents of all files, in the order listed,
form one token stream that is cut into sequences of ``seq_len`` tokens. Sample ``i`` is sequence ``i``: its inputs
are stream tokens ``[i·L, (i+1)·L)`` and its labels the tokens one step later, so every position has a next-token
label, the last one included (it is the first token of the next sequence). Only the final sequence can be short: it
is padded with the pad token, and padded positions have label ``ignore_index`` (and ``attention_mask`` 0), so
losses and metrics skip them.

The stream is tokenized once into an on-disk cache (:mod:`kdcache.datasets.tokencache`, ``uint16`` ids for
vocabularies up to 65,536) that later runs and other processes map; batches are cut from the map on demand.

The dataset's description (what a store's fingerprint records) names every concrete file with its SHA-256, the
tokenizer's fingerprint and the packing, so a store is refused for text tokenized or packed another way
(:func:`kdcache.train.require_token_alignment`).
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator, Mapping, Sequence
from fnmatch import fnmatch
from pathlib import Path
from typing import Any

import numpy as np
import torch

from kdcache.datasets.base import SampleDataset
from kdcache.datasets.corpus import DocumentFormat, expand_files, format_of, source_sha256, token_chunks
from kdcache.datasets.tokencache import cached_stream, default_cache_dir, release_pages
from kdcache.datasets.tokenizer import TOKENIZED_KINDS, LocalTokenizer, load_tokenizer
from kdcache.errors import ConfigError

IGNORE_INDEX = -100
LABEL_BLOCK_TOKENS = 1 << 20
"""Labels hashed at a time for the fingerprint (8 MB of int64)."""


class TokenSequences(SampleDataset):
    """What every dataset of fixed-length token sequences shares (:class:`TextDataset`, the chat dataset): its
    tokenizer, ``seq_len``, each sequence's real-token count ``lengths`` and the description stores record."""

    tokenizer: LocalTokenizer
    seq_len: int
    split: str
    lengths: np.ndarray
    _source: dict[str, Any]

    def __len__(self) -> int:
        return len(self.lengths)

    @property
    def vocab_size(self) -> int:
        """Token ids the tokenizer can produce; a model's vocabulary (logits width) must be at least this."""
        return self.tokenizer.vocab_size

    def attention_mask(self, indices: np.ndarray) -> torch.Tensor:
        """``(B, L)`` int64: 1 at real tokens, 0 at padding (what a Hugging Face model takes as ``attention_mask``)."""
        lengths = torch.as_tensor(self.lengths[np.asarray(indices, dtype=np.int64)])
        return (torch.arange(self.seq_len)[None, :] < lengths[:, None]).long()

    def describe(self) -> dict[str, Any]:
        return {**self._source, "split": self.split}

    def all_labels(self) -> np.ndarray:
        return self.get_batch(np.arange(len(self)))[1].numpy()


class TextDataset(TokenSequences):
    """Token sequences of ``seq_len`` packed from a local corpus: inputs ``(B, L)`` int64 token ids and labels
    ``(B, L)`` int64 next tokens (``ignore_index`` where there is none).

    ``files`` may hold globs and directories (expanded in sorted order; the description records the concrete files).
    ``root`` (optional) is joined to every name and may name a directory of :func:`sysconfig.get_paths` in braces,
    e.g. ``"{stdlib}"``; the description records the names relative to it, so a store built on one machine matches
    the same files elsewhere. ``sha256`` pins files to their digests: a file whose bytes differ is refused, not
    silently used. ``cache_dir`` holds the tokenized streams (default :func:`~kdcache.datasets.tokencache.default_cache_dir`).

    >>> train = TextDataset(["shards/*.jsonl.zst"], tokenizer="tokenizer.json", seq_len=128)  # doctest: +SKIP
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
        cache_dir: str | Path | None = None,
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
        sources = expand_files(files, root)
        digests = [source_sha256(path) for _, path in sources]
        check_pins([name for name, _ in sources], digests, sha256 or {})
        kinds = [format_of(path, format) for _, path in sources]
        self.stream = token_stream(
            [path for _, path in sources],
            digests,
            kinds,
            tokenizer=self.tokenizer,
            text_field=text_field,
            eos_id=self.eos_id,
            seq_len=self.seq_len,
            cache_dir=Path(cache_dir or default_cache_dir()),
            progress=progress,
        )
        self.num_tokens = len(self.stream)
        if self.num_tokens < 2:
            raise ConfigError(f"the text holds {self.num_tokens} token(s); a language model needs at least 2")
        n = -(-(self.num_tokens - 1) // self.seq_len)
        self.lengths = np.clip(self.num_tokens - np.arange(n) * self.seq_len, 0, self.seq_len).astype(np.int64)
        self._source = self._record(root, sources, digests, format, text_field, eos_token, pad_token)

    def _record(
        self,
        root: str | None,
        sources: list[tuple[str, Path]],
        digests: list[str],
        format: DocumentFormat,
        text_field: str,
        eos_token: str,
        pad_token: str | None,
    ) -> dict[str, Any]:
        """What the manifest records of this text: its files by content, how they were read, tokenized and packed."""
        return {
            "kind": "text",
            "root": root,
            "files": [[name, digest] for (name, _), digest in zip(sources, digests, strict=True)],
            "format": format,
            "text_field": text_field,
            "tokenizer": self.tokenizer.fingerprint(),
            "packing": {
                "seq_len": self.seq_len,
                "separator": [self.eos_id, eos_token],
                "pad": [self.pad_id, pad_token or eos_token],
                "ignore_index": self.ignore_index,
                "documents": "files in the order listed, each followed by the separator",
                "stream_tokens": self.num_tokens,
            },
        }

    def get_batch(self, indices: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        inputs, labels = sequences(
            self.stream,
            np.asarray(indices, dtype=np.int64),
            seq_len=self.seq_len,
            pad_id=self.pad_id,
            ignore_index=self.ignore_index,
        )
        release_pages(self.stream)  # the pages read leave this process's RSS: it holds a batch's, not the corpus's
        return torch.from_numpy(inputs), torch.from_numpy(labels)

    def all_labels(self) -> np.ndarray:
        """Every sequence's labels ``(N, L)`` int64, the bytes of ``get_batch(all)[1]``, written straight from the
        stream into one array a block at a time (8 bytes a token; cutting them with :func:`sequences` held the
        inputs, positions and temporaries too: 34 bytes a token measured, 3.4 GB at 100M tokens)."""
        labels = np.empty((len(self), self.seq_len), dtype=np.int64)
        for lo, hi in self._label_blocks():
            labels[lo:hi] = self._label_rows(lo, hi)
        return labels

    def labels_sha256(self) -> str:
        """SHA-256 of :meth:`all_labels`, hashed :data:`LABEL_BLOCK_TOKENS` at a time: memory independent of the
        corpus's size, for the dataset fingerprint of stage one and stage two."""
        digest = hashlib.sha256()
        for lo, hi in self._label_blocks():
            digest.update(self._label_rows(lo, hi).data)
        return digest.hexdigest()

    def _label_blocks(self) -> Iterator[tuple[int, int]]:
        block = max(1, LABEL_BLOCK_TOKENS // self.seq_len)
        return ((lo, min(lo + block, len(self))) for lo in range(0, len(self), block))

    def _label_rows(self, lo: int, hi: int) -> np.ndarray:
        """Labels ``(hi - lo, L)`` of sequences ``[lo, hi)``: stream position ``p + 1`` at flat position ``p``,
        ``ignore_index`` from the last token on."""
        labels = np.full((hi - lo) * self.seq_len, self.ignore_index, dtype=np.int64)
        start, stop = lo * self.seq_len, min(hi * self.seq_len, self.num_tokens - 1)
        labels[: max(0, stop - start)] = self.stream[start + 1 : stop + 1]
        release_pages(self.stream)
        return labels.reshape(hi - lo, self.seq_len)

    @property
    def inputs(self) -> torch.Tensor:
        """Every sequence's inputs ``(N, L)``, read into memory (for small splits; batches read only their rows)."""
        return self.get_batch(np.arange(len(self)))[0]

    @property
    def labels(self) -> torch.Tensor:
        """Every sequence's labels ``(N, L)``, read into memory."""
        return self.get_batch(np.arange(len(self)))[1]


def text_dataset(split: str, *, splits: Mapping[str, Sequence[str]], **options: Any) -> TextDataset:
    """The ``text`` dataset of pipeline files: ``splits`` maps each split name to its files; ``options`` are
    :class:`TextDataset`'s (``tokenizer``, ``seq_len``, ``root``, ``format``, ``sha256``, ``cache_dir``, ...)."""
    if split not in splits:
        raise ConfigError(f"data.args.splits has no split {split!r}; it lists {sorted(splits)}")
    listed = [name for files in splits.values() for name in files]
    if unknown := sorted(p for p in options.get("sha256") or {} if not any(_names(e, p) for e in listed)):
        raise ConfigError(f"data.args.sha256 pins files {unknown} that no split lists; pin only listed files")
    return TextDataset(list(splits[split]), split=split, **options)


def _names(entry: str, name: str) -> bool:
    """Whether a file-list entry (a name, glob or directory) can name file ``name``."""
    return name == entry or fnmatch(name, entry) or name.startswith(entry.rstrip("/") + "/")


def tokens_per_sample(source: Mapping[str, Any]) -> int | None:
    """Tokens per sample of a dataset from its description (a store's ``dataset.source``); None for non-text data."""
    packing = source.get("packing") if source.get("kind") in TOKENIZED_KINDS else None
    return None if packing is None else int(packing["seq_len"])


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


def token_stream(
    paths: Sequence[Path],
    digests: Sequence[str],
    kinds: Sequence[DocumentFormat],
    *,
    tokenizer: LocalTokenizer,
    text_field: str,
    eos_id: int,
    seq_len: int,
    cache_dir: Path,
    progress: bool = False,
) -> np.ndarray:
    """Every document's token ids followed by ``eos_id``, in file order, as one read-only array of the narrowest
    unsigned dtype: mapped from the token cache, keyed by the sources' digests and the tokenizer's fingerprint."""
    facts = {
        "sources": [[d, k] for d, k in zip(digests, kinds, strict=True)],
        "text_field": text_field if any(k != "tokens" for k in kinds) else None,
        "tokenizer": tokenizer.fingerprint()["digest"],
        "eos_id": eos_id,
        "seq_len": seq_len if "tokens" in kinds else None,  # it only checks the width of packed .npy sequences
    }

    def chunks() -> Iterator[np.ndarray]:
        for path, kind in zip(paths, kinds, strict=True):
            yield from token_chunks(
                path, kind, text_field=text_field, tokenizer=tokenizer, eos_id=eos_id, seq_len=seq_len
            )

    return cached_stream(facts, chunks, vocab_size=tokenizer.vocab_size, cache_dir=cache_dir, progress=progress)


def sequences(
    stream: np.ndarray, indices: np.ndarray, *, seq_len: int, pad_id: int, ignore_index: int = IGNORE_INDEX
) -> tuple[np.ndarray, np.ndarray]:
    """Inputs and next-token labels ``(B, L)`` int64 of sequences ``indices`` of ``stream`` packed as :func:`pack`
    packs it, reading only their tokens (the stream may be a memory map)."""
    positions = indices[:, None] * seq_len + np.arange(seq_len)[None, :]
    last = len(stream) - 1
    inputs = np.where(positions <= last, stream[np.minimum(positions, last)].astype(np.int64), pad_id)
    labels = np.where(positions < last, stream[np.minimum(positions + 1, last)].astype(np.int64), ignore_index)
    return inputs, labels


def pack(
    stream: np.ndarray, *, seq_len: int, pad_id: int, ignore_index: int = IGNORE_INDEX
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Inputs ``(N, L)``, next-token labels ``(N, L)`` and real-token counts ``(N,)`` of a token stream cut into
    ``N = ceil((len - 1) / L)`` sequences (every sequence has at least one label); the last is padded."""
    if len(stream) < 2:
        raise ConfigError(f"the text holds {len(stream)} token(s); a language model needs at least 2")
    n = -(-(len(stream) - 1) // seq_len)
    inputs, labels = sequences(
        np.asarray(stream), np.arange(n), seq_len=seq_len, pad_id=pad_id, ignore_index=ignore_index
    )
    lengths = np.clip(len(stream) - np.arange(n) * seq_len, 0, seq_len).astype(np.int64)
    return inputs, labels, lengths
