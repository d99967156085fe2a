"""Text datasets: documents from text, JSON lines and Parquet files, tokenized locally, packed into sequences whose
labels are the next tokens; the description fingerprints files, tokenizer and packing."""

from __future__ import annotations

import json
import sysconfig

import numpy as np
import pytest
import torch

from kdcache.datasets import DATASETS, TextDataset
from kdcache.datasets.text import pack, tokens_per_sample
from kdcache.datasets.tokenizer import load_tokenizer, tokenizer_fingerprint
from kdcache.errors import ConfigError
from tests.lmkit import SEQ_LEN, save_teacher_dir, text_split, tiny_lm, train_wordlevel


def test_pack_cuts_the_stream_and_labels_the_next_token() -> None:
    stream = np.arange(10, 21)  # 11 tokens: 10 labelled positions, so ceil(10 / 4) = 3 sequences
    inputs, labels, lengths = pack(stream, seq_len=4, pad_id=1)
    assert inputs.tolist() == [[10, 11, 12, 13], [14, 15, 16, 17], [18, 19, 20, 1]]
    assert labels.tolist() == [[11, 12, 13, 14], [15, 16, 17, 18], [19, 20, -100, -100]]
    assert lengths.tolist() == [4, 4, 3]


def test_a_stream_that_fills_whole_sequences_has_no_padding() -> None:
    inputs, labels, lengths = pack(np.arange(9), seq_len=4, pad_id=1)  # 8 labelled positions: 2 sequences
    assert inputs.tolist() == [[0, 1, 2, 3], [4, 5, 6, 7]]
    assert labels[-1].tolist() == [5, 6, 7, 8]  # the last position's label is the stream's last token
    assert lengths.tolist() == [4, 4]


def test_text_dataset_packs_documents_with_separators(lm_corpus, lm_tokenizer) -> None:
    data = text_split(lm_corpus, lm_tokenizer)
    tokenizer = load_tokenizer(lm_tokenizer)
    expected = [i for f in lm_corpus for i in [*tokenizer.encode([f.read_text()])[0], data.eos_id]]
    assert data.num_tokens == len(expected) and len(data) == -(-(len(expected) - 1) // SEQ_LEN)
    inputs, labels = data.get_batch(np.arange(len(data)))
    assert inputs.dtype == labels.dtype == torch.int64 and inputs.shape == (len(data), SEQ_LEN)
    covered = min(len(expected), inputs.numel())  # the stream's last token is only a label when it ends a sequence
    assert inputs.flatten()[:covered].tolist() == expected[:covered]
    assert labels.flatten()[: len(expected) - 1].tolist() == expected[1:]
    assert (labels.flatten()[len(expected) - 1 :] == -100).all()
    assert (inputs.flatten()[covered:] == data.pad_id).all()
    mask = data.attention_mask(np.arange(len(data)))
    assert int(mask.sum()) == covered and mask.flatten()[:covered].all()
    assert (data.all_labels() == labels.numpy()).all()


def test_json_lines_and_parquet_give_the_same_sequences(lm_corpus, lm_tokenizer, tmp_path) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    texts = [f.read_text() for f in lm_corpus]
    jsonl = tmp_path / "docs.jsonl"
    jsonl.write_text("".join(json.dumps({"body": t}) + "\n" for t in texts))
    parquet = tmp_path / "docs.parquet"
    pq.write_table(pa.table({"body": texts}), parquet)
    plain = text_split(lm_corpus, lm_tokenizer)
    for path in (jsonl, parquet):
        other = TextDataset(
            [str(path)], tokenizer=lm_tokenizer, seq_len=SEQ_LEN, pad_token="<|pad|>", text_field="body"
        )
        assert torch.equal(other.inputs, plain.inputs) and torch.equal(other.labels, plain.labels)


def test_description_fingerprints_files_tokenizer_and_packing(lm_corpus, lm_tokenizer) -> None:
    source = text_split(lm_corpus, lm_tokenizer).describe()
    assert source["kind"] == "text" and source["split"] == "train"
    assert [name for name, _ in source["files"]] == [str(f) for f in lm_corpus]
    assert all(len(digest) == 64 for _, digest in source["files"])
    assert source["tokenizer"]["vocab_size"] == 300
    assert source["tokenizer"]["special_tokens"] == [[0, "<|endoftext|>"], [1, "<|pad|>"]]
    assert source["packing"]["seq_len"] == SEQ_LEN and source["packing"]["pad"] == [1, "<|pad|>"]
    assert tokens_per_sample(source) == SEQ_LEN and tokens_per_sample({"kind": "hdf5"}) is None


def test_tokenizer_identity_is_what_changes_token_ids(lm_corpus, lm_tokenizer, tmp_path):
    """Another vocabulary or other rules (a lowercasing normaliser) are another tokenizer; a chat template is hashed
    apart (it changes no id of plain text), and a re-save by transformers' save_pretrained, which adds a
    post-processor and a tokenizer_config.json, encodes the same ids and keeps the fingerprint."""
    from tokenizers import Tokenizer, normalizers

    base = load_tokenizer(lm_tokenizer).fingerprint()
    words = load_tokenizer(train_wordlevel(lm_corpus, tmp_path / "words.json")).fingerprint()
    assert words["vocab_size"] != base["vocab_size"] and words["digest"] != base["digest"]
    lowered = Tokenizer.from_file(str(lm_tokenizer))
    lowered.normalizer = normalizers.Lowercase()
    ruled = tokenizer_fingerprint(lowered)
    assert ruled["vocab_sha256"] == base["vocab_sha256"] and ruled["tokenizer_sha256"] != base["tokenizer_sha256"]
    resaved = save_teacher_dir(tiny_lm(300), tmp_path / "model", lm_tokenizer)
    assert json.loads((resaved / "tokenizer.json").read_text()) != json.loads(lm_tokenizer.read_text())
    (resaved / "chat_template.jinja").write_text("{% for m in messages %}{{ m.content }}{% endfor %}")
    again = load_tokenizer(resaved)
    assert again.fingerprint() == base and again.chat_template_sha256 is not None
    text = [doc.read_text() for doc in lm_corpus]
    assert again.encode(text) == load_tokenizer(lm_tokenizer).encode(text)
    assert load_tokenizer(lm_tokenizer).chat_template_sha256 is None


def test_sysconfig_root_and_pinned_digests(tmp_path) -> None:
    stdlib = sysconfig.get_paths()["stdlib"]
    from tokenizers import Tokenizer, models, pre_tokenizers

    tokenizer = Tokenizer(models.WordLevel({"<|endoftext|>": 0, "<unk>": 1}, unk_token="<unk>"))
    tokenizer.pre_tokenizer = pre_tokenizers.Whitespace()
    tokenizer.save(str(tmp_path / "tokenizer.json"))
    options = {"tokenizer": tmp_path / "tokenizer.json", "seq_len": 8, "root": "{stdlib}"}
    data = DATASETS.get("text")("train", splits={"train": ["this.py"], "test": ["keyword.py"]}, **options)
    digest = data.describe()["files"][0][1]
    assert data.describe()["root"] == "{stdlib}" and (tmp_path / "tokenizer.json").exists() and stdlib
    pinned = DATASETS.get("text")("train", splits={"train": ["this.py"]}, sha256={"this.py": digest}, **options)
    assert torch.equal(pinned.inputs, data.inputs)
    with pytest.raises(ConfigError, match=r"'this.py' has SHA-256 .* pins 000000"):
        DATASETS.get("text")("train", splits={"train": ["this.py"]}, sha256={"this.py": "0" * 64}, **options)
    with pytest.raises(ConfigError, match="no split lists"):
        DATASETS.get("text")("train", splits={"train": ["this.py"]}, sha256={"os.py": digest}, **options)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"pad_token": "<pad>"}, r"no pad token '<pad>'; its special tokens are \['<\|endoftext\|>', '<\|pad\|>'\]"),
        ({"seq_len": 1}, "seq_len must be at least 2"),
        ({"tokenizer": "missing/tokenizer.json"}, "no tokenizer at 'missing/tokenizer.json'"),
    ],
    ids=["unknown-special", "short-sequences", "missing-tokenizer"],
)
def test_bad_options_are_refused_with_the_fix(lm_corpus, lm_tokenizer, change, message) -> None:
    options = {"tokenizer": lm_tokenizer, "seq_len": SEQ_LEN, "pad_token": "<|pad|>", **change}
    with pytest.raises(ConfigError, match=message):
        TextDataset([str(f) for f in lm_corpus], **options)


def test_bad_json_lines_name_the_line(lm_tokenizer, tmp_path) -> None:
    path = tmp_path / "bad.jsonl"
    path.write_text('{"text": "fine"}\n{"body": "no text field"}\n')
    with pytest.raises(ConfigError, match=r"bad.jsonl:2: expected a JSON object with a string field 'text'"):
        TextDataset([str(path)], tokenizer=lm_tokenizer, seq_len=4)
