"""Token sequences stored in the store itself (``store_tokens``): stage two trains from the store with the corpus
deleted, on batches equal to the original dataset's, with the same fingerprint and per-sample digests; a corrupted
``samples/tokens`` shard is refused; a store without them reads and refuses as before."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from kdcache.datasets import ChatDataset
from kdcache.datasets.fingerprint import dataset_fingerprint
from kdcache.datasets.packed import LABELS, LENGTHS, TOKENS
from kdcache.errors import ConfigError, CorruptShardError, StoreMismatchError, TokenAlignmentError
from kdcache.losses import LossSetup, StepOutputs, build_objective
from kdcache.pipeline import parse_pipeline
from kdcache.pipeline.distill import run_precompute, train_student
from kdcache.precompute import precompute
from kdcache.store import open_store
from kdcache.targets import build_target
from kdcache.tools.recompute import recompute_pipeline_store
from kdcache.train import CachedTokenDataset, StoredTokens, batch_loader
from kdcache.views import TokenViews
from tests.chatkit import chat_tokenizer, write_chat
from tests.lmkit import SEQ_LEN, lm_pipeline_dict, text_split, tiny_lm, train_bpe

TARGETS = ["token_logits_topk", "token_logits_sampled"]


def cache_tokens(path, teacher, dataset, **options):
    targets = [
        build_target("token_logits", {"k": 8}),
        build_target("token_logits", {"encoding": "sampled", "samples": 4}),
    ]
    return precompute(
        teacher,
        dataset,
        str(path),
        targets=targets,
        views=TokenViews(),
        num_classes=300,
        teacher_name="lm",
        shard_samples=64,
        batch_size=16,
        progress=False,
        **options,
    )


@pytest.fixture
def own_corpus(tmp_path, lm_corpus):
    """A copy of the test corpus this test may delete."""
    directory = tmp_path / "corpus"
    directory.mkdir()
    return [Path(shutil.copy(f, directory / f.name)) for f in lm_corpus]


def test_a_student_trains_from_the_store_with_the_corpus_deleted(tmp_path, own_corpus, lm_tokenizer, lm_teacher):
    original = text_split(own_corpus, lm_tokenizer)
    cache_tokens(tmp_path / "s.zarr", lm_teacher, original, store_tokens=True)
    cache = open_store(str(tmp_path / "s.zarr"))
    expected = CachedTokenDataset(original, cache, teacher="lm", targets=TARGETS, vocab_size=300)
    reference = [b.to("cpu") for b in batch_loader(expected, batch_size=8, seed=0)]
    masks = [original.attention_mask(b.indices.numpy()) for b in reference]
    for path in own_corpus:
        path.unlink()
    with pytest.raises(ConfigError, match="does not exist"):
        text_split(own_corpus, lm_tokenizer)  # the corpus is gone

    data = CachedTokenDataset.from_store(
        open_store(str(tmp_path / "s.zarr")), teacher="lm", targets=TARGETS, vocab_size=300
    )
    assert dataset_fingerprint(data.dataset, num_classes=300) == cache.manifest.dataset  # every refusal applies
    student = tiny_lm(300, seed=3)
    optimizer = torch.optim.AdamW(student.parameters(), lr=0.01)
    loss = build_objective(
        [("token_kd", 1.0, {"target": "token_logits_topk"})], LossSetup(num_classes=300, task="language-model")
    ).terms["token_kd"]
    steps = 0
    for batch, want, mask in zip(batch_loader(data, batch_size=8, seed=0), reference, masks, strict=True):
        batch = batch.to("cpu")
        assert torch.equal(batch.indices, want.indices) and torch.equal(batch.inputs, want.inputs)
        assert torch.equal(batch.labels, want.labels)
        assert torch.equal(data.dataset.attention_mask(batch.indices.numpy()), mask)
        for name in TARGETS:
            for field in ("indices", "values") if name.endswith("topk") else ("ids", "counts"):
                assert torch.equal(getattr(batch.targets[name], field), getattr(want.targets[name], field))
        value = loss(StepOutputs(student(batch.inputs), batch.labels, teacher=batch.targets))
        optimizer.zero_grad()
        value.backward()
        optimizer.step()
        assert torch.isfinite(value)
        steps += 1
    assert steps == len(reference) == -(-len(original) // 8)


def test_the_token_arrays_are_narrow_and_committed_like_every_sample_array(tmp_path, lm_train, lm_teacher):
    cache_tokens(tmp_path / "s.zarr", lm_teacher, lm_train, store_tokens=True)
    cache = open_store(str(tmp_path / "s.zarr"))
    arrays = cache.manifest.samples.arrays
    n = len(lm_train)
    assert (arrays[TOKENS].dtype, arrays[TOKENS].shape) == ("uint16", [n, SEQ_LEN])  # 300 ids
    assert (arrays[LABELS].dtype, arrays[LABELS].shape) == ("int16", [n, SEQ_LEN])
    assert (arrays[LENGTHS].dtype, arrays[LENGTHS].shape) == ("int64", [n])
    for commit in cache.commits_of("samples"):
        assert {TOKENS, LABELS, LENGTHS} <= set(commit.files)  # each with its SHA-256
    assert cache.check_digests() == []
    stored = StoredTokens(cache)
    inputs, labels = lm_train.get_batch(np.arange(n))
    assert torch.equal(stored.get_batch(np.arange(n))[0], inputs)
    assert np.array_equal(stored.all_labels(), labels.numpy())


def test_a_corrupted_tokens_shard_is_refused(tmp_path, lm_train, lm_teacher):
    cache_tokens(tmp_path / "s.zarr", lm_teacher, lm_train, store_tokens=True)
    shard = tmp_path / "s.zarr" / TOKENS / "c" / "0" / "0"
    raw = bytearray(shard.read_bytes())
    raw[len(raw) // 3] ^= 0x40
    shard.write_bytes(bytes(raw))
    stored = StoredTokens(open_store(str(tmp_path / "s.zarr")))
    with pytest.raises(CorruptShardError, match="samples/tokens"):
        stored.get_batch(np.arange(4))


def test_a_store_without_tokens_is_as_before_and_is_refused_for_stored_tokens(tmp_path, lm_train, lm_teacher):
    cache_tokens(tmp_path / "s.zarr", lm_teacher, lm_train)
    cache = open_store(str(tmp_path / "s.zarr"))
    assert set(cache.manifest.samples.arrays) == {"samples/index", "samples/digest", "samples/view_digest"}
    with pytest.raises(
        StoreMismatchError,
        match="holds no samples/tokens, samples/labels, samples/lengths: it was built without store_tokens",
    ):
        StoredTokens(cache)


def test_chat_sequences_come_back_with_their_masked_labels(tmp_path):
    data = write_chat(tmp_path / "chat")
    chat = ChatDataset([str(data)], tokenizer=chat_tokenizer(tmp_path / "tok"), seq_len=64, pad_token="<|pad|>")
    cache_tokens(tmp_path / "c.zarr", tiny_lm(300, seed=1).eval(), chat, store_tokens=True)
    data.unlink()
    stored = StoredTokens(open_store(str(tmp_path / "c.zarr")))
    every = np.arange(len(chat))
    for got, want in zip(stored.get_batch(every), chat.get_batch(every), strict=True):
        assert torch.equal(got, want)
    assert torch.equal(stored.attention_mask(every), chat.attention_mask(every))
    assert (chat.labels == -100).float().mean() > 0.5  # most positions carry no label, and none came back wrong


def test_a_pipeline_trains_its_cached_student_from_the_store_alone(tmp_path, own_corpus, lm_tokenizer):
    raw = lm_pipeline_dict(tmp_path, own_corpus, lm_tokenizer)
    raw["cache"] |= {"store": str(tmp_path / "train.zarr"), "store_tokens": True}
    cfg = parse_pipeline(raw)
    assert run_precompute(cfg, progress=False).complete
    for path in own_corpus[:-1]:  # the training split's files; the held-out one stays for evaluation
        path.unlink()
    run = train_student(cfg, "cached", progress=False)
    assert len(run.result.history) == 2 and run.metrics["perplexity"] < 300
    # the teacher re-run of verify --recompute reads the stored sequences too: no corpus needed
    report = recompute_pipeline_store(cfg, cfg.store_url, pairs=4, progress=False)
    assert report.passed and report.pairs == 4


def test_a_pipeline_with_another_tokenizer_is_refused_even_when_the_store_holds_the_tokens(
    tmp_path, own_corpus, lm_tokenizer
):
    """The store's sequences need no tokenizer, but the evaluation split is tokenized with data.args.tokenizer: one
    of the same width with other ids (trained on other text) must be refused, not evaluated silently."""
    raw = lm_pipeline_dict(tmp_path, own_corpus, lm_tokenizer)
    raw["cache"] |= {"store": str(tmp_path / "train.zarr"), "store_tokens": True}
    assert run_precompute(parse_pipeline(raw), progress=False).complete
    other = train_bpe(own_corpus[-1:], tmp_path / "other" / "tokenizer.json")  # 300 ids, merges of other text
    raw["data"]["args"]["tokenizer"] = str(other)
    with pytest.raises(TokenAlignmentError, match=r"data\.args\.tokenizer"):
        train_student(parse_pipeline(raw), "cached", progress=False)
