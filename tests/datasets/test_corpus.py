"""Corpora as language-model users have them: globs, directories, compressed text and JSON lines, Parquet, Arrow and
``datasets`` directories, and pre-tokenized ids each pack to exactly the tokens of the same documents as plain text;
the stream is tokenized once into a verified on-disk cache."""

from __future__ import annotations

import gzip
import hashlib
import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from kdcache.datasets import TextDataset, text
from kdcache.datasets.text import pack, text_dataset
from kdcache.datasets.tokenizer import LocalTokenizer, load_tokenizer
from kdcache.errors import ConfigError
from tests.conftest import ROOT
from tests.lmkit import SEQ_LEN


def build(files: list[str], tokenizer: Path, cache: Path, **options) -> TextDataset:
    return TextDataset(files, tokenizer=tokenizer, seq_len=SEQ_LEN, pad_token="<|pad|>", cache_dir=cache, **options)


@pytest.fixture
def docs(lm_corpus: list[Path], tmp_path: Path) -> Path:
    """The corpus's documents alone in a directory (doc0.txt ... doc5.txt)."""
    directory = tmp_path / "docs"
    directory.mkdir()
    for f in lm_corpus:
        shutil.copy(f, directory / f.name)
    return directory


@pytest.fixture
def plain(lm_corpus: list[Path], lm_tokenizer: Path, tmp_path: Path) -> TextDataset:
    return build([str(f) for f in lm_corpus], lm_tokenizer, tmp_path / "plain-cache")


def texts(lm_corpus: list[Path]) -> list[str]:
    return [f.read_text() for f in lm_corpus]


def same_sequences(data: TextDataset, plain: TextDataset) -> bool:
    return (
        data.num_tokens == plain.num_tokens
        and torch.equal(data.inputs, plain.inputs)
        and torch.equal(data.labels, plain.labels)
        and bool((data.lengths == plain.lengths).all())
    )


def compressed_jsonl(lm_corpus: list[Path], path: Path) -> Path:
    import zstandard

    lines = "".join(json.dumps({"text": t}) + "\n" for t in texts(lm_corpus)).encode()
    path.write_bytes(zstandard.ZstdCompressor().compress(lines))
    return path


def gzipped(docs: Path, tmp_path: Path) -> list[str]:
    names = []
    for f in sorted(docs.iterdir()):
        names.append(str(tmp_path / f"{f.name}.gz"))
        Path(names[-1]).write_bytes(gzip.compress(f.read_bytes()))
    return names


def saved_dataset(lm_corpus: list[Path], path: Path) -> Path:
    import datasets

    datasets.Dataset.from_dict({"text": texts(lm_corpus)}).save_to_disk(str(path))
    return path


def parquet(lm_corpus: list[Path], path: Path) -> Path:
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.table({"text": texts(lm_corpus)}), path, row_group_size=2)
    return path


@pytest.mark.parametrize(
    "make",
    [
        lambda c, d, t: [str(d / "doc*.txt")],
        lambda c, d, t: [str(d)],
        lambda c, d, t: gzipped(d, t),
        lambda c, d, t: [str(compressed_jsonl(c, t / "docs.jsonl.zst"))],
        lambda c, d, t: [str(saved_dataset(c, t / "saved"))],
        lambda c, d, t: sorted(str(p) for p in saved_dataset(c, t / "saved").glob("*.arrow")),
        lambda c, d, t: [str(parquet(c, t / "docs.parquet"))],
    ],
    ids=["glob", "directory", "gzip-text", "zstd-jsonl", "save-to-disk", "arrow-file", "parquet"],
)
def test_every_input_form_packs_the_tokens_of_plain_text(make, lm_corpus, lm_tokenizer, docs, plain, tmp_path):
    data = build(make(lm_corpus, docs, tmp_path), lm_tokenizer, tmp_path / "cache")
    assert same_sequences(data, plain)
    assert data.stream.dtype == np.uint16  # a 300-id vocabulary: 2 bytes a token on disk and in the map


def test_globs_and_directories_are_recorded_as_concrete_files_by_content(lm_tokenizer, docs, plain, tmp_path):
    data = build(["docs/*.txt"], lm_tokenizer, tmp_path / "cache", root=str(tmp_path))
    files = data.describe()["files"]
    assert [name for name, _ in files] == [f"docs/doc{d}.txt" for d in range(6)]
    assert [d for _, d in files] == [hashlib.sha256((tmp_path / n).read_bytes()).hexdigest() for n, _ in files]
    assert [d for _, d in files] == [d for _, d in plain.describe()["files"]]
    again = build(["docs"], lm_tokenizer, tmp_path / "cache", root=str(tmp_path))
    assert again.describe()["files"] == files
    pin = {"docs/doc0.txt": files[0][1]}  # a pin names a concrete file a glob expands to
    pinned = text_dataset(
        "train",
        splits={"train": ["docs/*.txt"]},
        sha256=pin,
        tokenizer=lm_tokenizer,
        seq_len=SEQ_LEN,
        pad_token="<|pad|>",
        root=str(tmp_path),
        cache_dir=tmp_path / "cache",
    )
    assert same_sequences(pinned, plain)


def test_pre_tokenized_streams_and_packed_sequences(lm_corpus, lm_tokenizer, plain, tmp_path):
    tokenizer = load_tokenizer(lm_tokenizer)
    stream = np.array([i for t in texts(lm_corpus) for i in [*tokenizer.encode([t])[0], plain.eos_id]])
    np.save(tmp_path / "stream.npy", stream.astype(np.int32))
    assert same_sequences(build([str(tmp_path / "stream.npy")], lm_tokenizer, tmp_path / "cache"), plain)
    whole = len(stream) // SEQ_LEN * SEQ_LEN  # 2-D sequences are their concatenation, cut at the same places
    np.save(tmp_path / "packed.npy", stream[:whole].reshape(-1, SEQ_LEN).astype(np.uint16))
    packed = build([str(tmp_path / "packed.npy")], lm_tokenizer, tmp_path / "cache")
    inputs, labels, lengths = pack(stream[:whole], seq_len=SEQ_LEN, pad_id=plain.pad_id)
    assert packed.inputs.tolist() == inputs.tolist() and packed.labels.tolist() == labels.tolist()
    assert packed.inputs[:-1].tolist() == plain.inputs[: whole // SEQ_LEN - 1].tolist()
    assert (packed.lengths == lengths).all()


def test_the_stream_is_tokenized_once_and_a_corrupted_cache_is_rebuilt(
    lm_corpus, lm_tokenizer, plain, tmp_path, monkeypatch
):
    calls = []
    encode = LocalTokenizer.encode
    monkeypatch.setattr(LocalTokenizer, "encode", lambda self, batch: calls.append(len(batch)) or encode(self, batch))
    files, cache = [str(f) for f in lm_corpus], tmp_path / "cache"
    first = build(files, lm_tokenizer, cache)
    assert sum(calls) == len(lm_corpus) and same_sequences(first, plain)
    (stream,) = cache.glob("*.tokens")
    assert stream.stat().st_size == 2 * first.num_tokens  # uint16
    calls.clear()
    assert same_sequences(build(files, lm_tokenizer, cache), plain) and calls == []  # mapped, not tokenized
    raw = bytearray(stream.read_bytes())
    raw[10] ^= 0xFF
    stream.unlink()  # a new file: the streams mapped above keep their own bytes
    stream.write_bytes(bytes(raw))
    with pytest.warns(UserWarning, match="does not match its record"):
        rebuilt = build(files, lm_tokenizer, cache)
    assert sum(calls) == len(lm_corpus) and same_sequences(rebuilt, plain)
    other = build(files[:2], lm_tokenizer, cache)  # another corpus: another key, its own stream
    assert other.num_tokens < plain.num_tokens and len(list(cache.glob("*.tokens"))) == 2


CHILD = """
import json, sys
from kdcache.datasets import TextDataset
from kdcache.datasets.tokenizer import LocalTokenizer
calls, encode = [], LocalTokenizer.encode
LocalTokenizer.encode = lambda self, batch: calls.append(len(batch)) or encode(self, batch)
files, tokenizer, cache = json.loads(sys.argv[1])
data = TextDataset(files, tokenizer=tokenizer, seq_len=16, pad_token="<|pad|>", cache_dir=cache)
print(json.dumps([sum(calls), data.inputs.tolist()]))
"""


def test_another_process_maps_the_stream_without_tokenizing(lm_corpus, lm_tokenizer, plain, tmp_path):
    cache = tmp_path / "cache"
    build([str(f) for f in lm_corpus], lm_tokenizer, cache)
    argument = json.dumps([[str(f) for f in lm_corpus], str(lm_tokenizer), str(cache)])
    done = subprocess.run(
        [sys.executable, "-c", CHILD, argument], cwd=ROOT, capture_output=True, text=True, check=True, timeout=300
    )
    calls, inputs = json.loads(done.stdout.strip().splitlines()[-1])
    assert calls == 0 and inputs == plain.inputs.tolist()


def test_a_cache_copied_under_another_key_is_refused(lm_corpus, lm_tokenizer, tmp_path):
    cache = tmp_path / "cache"
    few = build([str(lm_corpus[0])], lm_tokenizer, cache)
    many = build([str(f) for f in lm_corpus], lm_tokenizer, cache)
    (small,) = [p for p in cache.glob("*.tokens") if p.stat().st_size == 2 * few.num_tokens]
    large = next(p for p in cache.glob("*.tokens") if p != small)
    for suffix in (".tokens", ".json"):  # the name of the large stream, the bytes and record of the small one
        large.with_suffix(suffix).unlink()  # a new file: the stream mapped above keeps its own bytes
        shutil.copy(small.with_suffix(suffix), large.with_suffix(suffix))
    with pytest.warns(UserWarning, match="does not match its record"):
        again = build([str(f) for f in lm_corpus], lm_tokenizer, cache)
    assert again.num_tokens == many.num_tokens and torch.equal(again.inputs, many.inputs)


@pytest.mark.parametrize(
    ("name", "content", "message"),
    [
        ("bad.txt", b"caf\xc3\xa9 ok \xff rest", r"'.*bad.txt' is not UTF-8 text: byte offset 9 is b'\\xff'"),
        (
            "bad.jsonl.gz",
            gzip.compress(b'{"text": "a"}\n{"text": "\xfe"}\n'),
            r"bad.jsonl.gz' is not UTF-8 text: decompressed byte offset 24",
        ),
    ],
    ids=["text", "gzip-jsonl"],
)
def test_bytes_that_are_not_utf8_name_the_file_and_offset(name, content, message, lm_tokenizer, tmp_path):
    (tmp_path / name).write_bytes(content)
    with pytest.raises(ConfigError, match=message):
        build([str(tmp_path / name)], lm_tokenizer, tmp_path / "cache")
    assert not list((tmp_path / "cache").glob("*"))  # nothing cached, not even the partial stream


@pytest.mark.parametrize(
    ("ids", "message"),
    [
        (np.array([5, 7, 300, 2]), r"token id 300 at position 2, outside the tokenizer's vocabulary \[0, 300\)"),
        (np.array([5, -1]), r"token id -1 at position 1"),
        (np.zeros((2, SEQ_LEN + 1), dtype=np.int64), f"sequences of {SEQ_LEN + 1} tokens, but seq_len is {SEQ_LEN}"),
        (np.array([0.5, 1.0]), "1-D float64 array; pre-tokenized input is integer token ids"),
    ],
    ids=["id-past-vocabulary", "negative-id", "packed-width", "floats"],
)
def test_pre_tokenized_ids_are_checked(ids, message, lm_tokenizer, tmp_path):
    np.save(tmp_path / "ids.npy", ids)
    with pytest.raises(ConfigError, match=message):
        build([str(tmp_path / "ids.npy")], lm_tokenizer, tmp_path / "cache")


def test_missing_sources_are_named(lm_corpus, lm_tokenizer, tmp_path):
    with pytest.raises(ConfigError, match=r"the glob '.*\*.jsonl.zst' matches no file"):
        build([str(tmp_path / "*.jsonl.zst")], lm_tokenizer, tmp_path / "cache")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ConfigError, match="holds no files"):
        build([str(tmp_path / "empty")], lm_tokenizer, tmp_path / "cache")
    import datasets

    splits = datasets.DatasetDict({"train": datasets.Dataset.from_dict({"text": texts(lm_corpus)})})
    splits.save_to_disk(str(tmp_path / "dict"))
    with pytest.raises(ConfigError, match=r"holds the splits \['train'\]; name one split's directory"):
        build([str(tmp_path / "dict")], lm_tokenizer, tmp_path / "cache")
    with pytest.raises(ConfigError, match="has no column 'body'"):
        build([str(saved_dataset(lm_corpus, tmp_path / "saved"))], lm_tokenizer, tmp_path / "cache", text_field="body")


@pytest.mark.parametrize(
    ("module", "make", "message"),
    [
        ("zstandard", lambda c, t: compressed_jsonl(c, t / "docs.jsonl.zst"), "needs `zstandard`"),
        ("datasets", lambda c, t: saved_dataset(c, t / "saved"), "needs `datasets`"),
    ],
    ids=["zstandard", "datasets"],
)
def test_a_missing_optional_library_names_the_extra(
    module, make, message, lm_corpus, lm_tokenizer, tmp_path, monkeypatch
):
    path = make(lm_corpus, tmp_path)
    monkeypatch.setitem(sys.modules, module, None)  # what `import` meets where the library is not installed
    with pytest.raises(ConfigError, match=rf"{message}; pip install 'kdcache\[lm\]'"):
        build([str(path)], lm_tokenizer, tmp_path / "cache")


def test_labels_and_their_digest_are_the_packed_batches_built_in_blocks(plain, monkeypatch) -> None:
    packed = plain.get_batch(np.arange(len(plain)))[1].numpy()
    assert plain.all_labels().dtype == np.int64 and np.array_equal(plain.all_labels(), packed)
    expected = hashlib.sha256(np.ascontiguousarray(packed, dtype=np.int64)).hexdigest()  # what fingerprints hashed
    assert plain.labels_sha256() == expected
    monkeypatch.setattr(text, "LABEL_BLOCK_TOKENS", SEQ_LEN)  # a block per sequence: every boundary is crossed
    assert plain.labels_sha256() == expected


def mapped_kib(path: Path) -> int:
    """Resident KiB of this process's mappings of ``path`` (``/proc/self/smaps``)."""
    total, inside = 0, False
    for line in Path("/proc/self/smaps").read_text().splitlines():
        if not line.split()[0].endswith(":"):  # a mapping's header: address range, permissions, ..., path
            inside = line.split()[-1] == str(path)
        elif inside and line.startswith("Rss:"):
            total += int(line.split()[1])
    return total


def test_batches_read_leave_no_stream_pages_resident(plain, tmp_path) -> None:
    (path,) = (tmp_path / "plain-cache").glob("*.tokens")
    plain.stream[: len(plain.stream)].sum()  # touch every page of the map
    assert mapped_kib(path) > 0
    plain.get_batch(np.arange(len(plain)))
    assert mapped_kib(path) == 0  # the pages read stay in the page cache, not in this process's RSS
