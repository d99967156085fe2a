"""Stage two for language models on real stores: the KD loss from the cache equals the loss from the live teacher
through the same encoding (and dense KD when k = V), and stores made for other text or vocabularies are refused
with errors naming both sides."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from kdcache.errors import TokenAlignmentError
from kdcache.losses import LossSetup, StepOutputs, build_objective
from kdcache.precompute import precompute
from kdcache.store import open_store
from kdcache.targets import TargetExtractor, build_target
from kdcache.train import CachedTokenDataset, LiveTeacher, batch_loader, require_token_alignment
from kdcache.views import TokenViews
from tests.lmkit import text_split, tiny_lm, train_bpe, train_wordlevel

TOPK = {"k": 8, "temperatures": [1.0, 2.0]}
SAMPLED = {"encoding": "sampled", "samples": 12}


def cache_lm(path, teacher, dataset, targets, **options):
    return precompute(
        teacher,
        dataset,
        str(path),
        targets=[build_target("token_logits", t) for t in targets],
        views=TokenViews(),
        num_classes=dataset.vocab_size,
        teacher_name="lm",
        shard_samples=64,
        batch_size=16,
        progress=False,
        **options,
    )


def kd(target: str, temperature: float = 1.0, direction: str = "forward"):
    setup = LossSetup(num_classes=300, task="language-model")
    params = {"target": target, "temperature": temperature, "direction": direction}
    return build_objective([("token_kd", 1.0, params)], setup).terms["token_kd"]


@pytest.mark.parametrize("direction", ["forward", "reverse"])
def test_topk_loss_from_the_cache_equals_the_loss_from_the_live_teacher(tmp_path, lm_teacher, lm_train, direction):
    report = cache_lm(tmp_path / "s.zarr", lm_teacher, lm_train, [TOPK, SAMPLED])
    assert report.complete and 0 < report.accuracy < 1  # the teacher's next-token accuracy on the cached text
    data = CachedTokenDataset(
        lm_train,
        open_store(str(tmp_path / "s.zarr")),
        teacher="lm",
        targets=["token_logits_topk", "token_logits_sampled"],
        vocab_size=300,
    )
    target = build_target("token_logits", TOPK)
    student = tiny_lm(300, seed=3).eval()
    checked = 0
    with TargetExtractor(lm_teacher, [target], "cpu") as extract:
        for batch in batch_loader(data, batch_size=24, seed=0):
            batch = batch.to("cpu")
            _, live = extract(batch.inputs)
            target.layout(tuple(live["token_logits_topk"].shape[1:]))
            stored_live = target.decode(
                {k: torch.from_numpy(v) for k, v in target.encode(live["token_logits_topk"]).items()}
            )
            logits = student(batch.inputs)
            for temperature in (1.0, 2.0):
                loss = kd("token_logits_topk", temperature, direction)
                cached = loss(StepOutputs(logits, batch.labels, teacher=batch.targets))
                live_value = loss(StepOutputs(logits, batch.labels, teacher={"token_logits_topk": stored_live}))
                assert cached.item() == live_value.item()  # same tokens, same encoding: the same number
            sampled = kd("token_logits_sampled")(StepOutputs(logits, batch.labels, teacher=batch.targets))
            assert torch.isfinite(sampled)
            checked += len(batch.indices)
    assert checked == len(lm_train)


def test_k_equal_to_the_vocabulary_gives_dense_kd_from_the_cache(tmp_path, lm_teacher, lm_train):
    cache_lm(tmp_path / "full.zarr", lm_teacher, lm_train, [{"k": 300, "dtype": "float32"}])
    data = CachedTokenDataset(
        lm_train, open_store(str(tmp_path / "full.zarr")), teacher="lm", targets=["token_logits_topk"]
    )
    live = LiveTeacher(lm_teacher, [build_target("token_logits", {"k": 300})], "cpu")
    student = tiny_lm(300, seed=3).eval()
    batch = data[np.arange(32)].to("cpu")
    logits = student(batch.inputs)
    loss = kd("token_logits_topk")
    cached = loss(StepOutputs(logits, batch.labels, teacher=batch.targets)).item()
    dense = loss(StepOutputs(logits, batch.labels, teacher=live(batch))).item()  # exact KL over every token
    assert cached == pytest.approx(dense, rel=1e-5)


def test_fp16_topk_is_close_to_dense_kd_and_keeps_the_mass(tmp_path, lm_teacher, lm_train):
    cache_lm(tmp_path / "s.zarr", lm_teacher, lm_train, [{"k": 32}])
    data = CachedTokenDataset(
        lm_train, open_store(str(tmp_path / "s.zarr")), teacher="lm", targets=["token_logits_topk"]
    )
    batch = data[np.arange(len(lm_train))].to("cpu")
    top = batch.targets["token_logits_topk"]
    mass = (top.values - top.lse[..., :1]).exp().sum(dim=-1)
    assert float(mass.min()) > 0.5 and float(mass.max()) <= 1.0 + 1e-3


def test_a_dataset_tokenized_with_another_tokenizer_is_refused(tmp_path, lm_corpus, lm_teacher, lm_train):
    cache_lm(tmp_path / "s.zarr", lm_teacher, lm_train, [TOPK])
    other = text_split(lm_corpus, train_wordlevel(lm_corpus, tmp_path / "words.json"))
    with pytest.raises(TokenAlignmentError) as error:
        CachedTokenDataset(other, open_store(str(tmp_path / "s.zarr")), teacher="lm", targets=["token_logits_topk"])
    message = str(error.value)
    assert "another tokenizer than the dataset's" in message and "vocab_size" in message
    assert "the store's has vocabulary 300" in message and f"the dataset's has vocabulary {other.vocab_size}" in message


def test_a_dataset_packed_differently_is_refused(tmp_path, lm_corpus, lm_tokenizer, lm_teacher, lm_train):
    cache_lm(tmp_path / "s.zarr", lm_teacher, lm_train, [TOPK])
    repacked = text_split(lm_corpus, lm_tokenizer, seq_len=12)
    with pytest.raises(TokenAlignmentError, match=r"packed another way \(seq_len: store 16, dataset 12"):
        CachedTokenDataset(repacked, open_store(str(tmp_path / "s.zarr")), teacher="lm", targets=["token_logits_topk"])
    reordered = text_split(lm_corpus[::-1], lm_tokenizer)
    with pytest.raises(Exception, match="different dataset"):  # same packing rules, other files: the dataset check
        CachedTokenDataset(reordered, open_store(str(tmp_path / "s.zarr")), teacher="lm", targets=["token_logits_topk"])


def test_a_student_of_another_vocabulary_or_tokenizer_is_refused(tmp_path, lm_corpus, lm_teacher, lm_train):
    cache_lm(tmp_path / "s.zarr", lm_teacher, lm_train, [TOPK])
    cache = open_store(str(tmp_path / "s.zarr"))
    with pytest.raises(
        TokenAlignmentError, match="teacher 'lm' has a vocabulary of 300 tokens, but the student's is 512"
    ):
        require_token_alignment(cache, lm_train, teacher="lm", vocab_size=512)
    other = train_bpe(lm_corpus, tmp_path / "other" / "tokenizer.json", vocab_size=320)
    from kdcache.datasets.tokenizer import load_tokenizer

    with pytest.raises(TokenAlignmentError, match="another tokenizer than the student's"):
        require_token_alignment(cache, lm_train, tokenizer=load_tokenizer(other).fingerprint())
    require_token_alignment(cache, lm_train, teacher="lm", vocab_size=300, tokenizer=lm_train.tokenizer.fingerprint())
