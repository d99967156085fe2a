"""``masked: skip`` on token targets: positions without a label store the encoding of one constant row, so chat
stores shrink on disk, while every loss gives the same number as from a store of the teacher's values there, and
``verify --recompute`` passes; without it the target describes and lays out its arrays as before."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from kdcache.datasets import ChatDataset
from kdcache.errors import ConfigError
from kdcache.losses import LossSetup, StepOutputs, build_objective
from kdcache.precompute import precompute
from kdcache.store import open_store
from kdcache.targets import build_target
from kdcache.targets.tokens import certain_logits
from kdcache.tools.recompute import recompute_check
from kdcache.train import CachedTokenDataset, batch_loader
from kdcache.views import TokenViews
from tests.chatkit import chat_tokenizer, write_chat
from tests.lmkit import tiny_lm

TOPK = {"k": 8, "temperatures": [1.0, 2.0]}
SAMPLED = {"encoding": "sampled", "samples": 12}


@pytest.fixture(scope="module")
def chat(tmp_path_factory) -> ChatDataset:
    root = tmp_path_factory.mktemp("chat")
    return ChatDataset(
        [str(write_chat(root / "data"))], tokenizer=chat_tokenizer(root / "tok"), seq_len=64, pad_token="<|pad|>"
    )


def cache_chat(path, chat, masked):
    targets = [build_target("token_logits", {**t, "masked": masked}) for t in (TOPK, SAMPLED)]
    precompute(
        tiny_lm(300, seed=1).eval(),
        chat,
        str(path),
        targets=targets,
        views=TokenViews(),
        num_classes=300,
        teacher_name="lm",
        batch_size=2,
        progress=False,
    )
    return open_store(str(path))


@pytest.mark.parametrize("params", [TOPK, SAMPLED], ids=["topk", "sampled"])
def test_unlabelled_positions_hold_the_constant_and_labelled_ones_the_teacher(params):
    keep, skip = (build_target("token_logits", {**params, "masked": m}) for m in ("keep", "skip"))
    for target in (keep, skip):
        target.layout((6, 40))
    logits = torch.randn(2, 6, 40)
    labels = torch.tensor([[3, -100, 5, -100, -100, 7], [-100] * 6])
    samples, views = np.array([4, 9]), np.zeros(2, dtype=np.int64)
    masked = skip.encode_at(logits, samples, views, labels=labels)
    plain = keep.encode_at(logits, samples, views)
    constant = keep.encode_at(certain_logits(40, torch.float32, logits.device).expand(2, 6, 40), samples, views)
    unlabelled = (labels < 0).numpy()
    for name, array in masked.items():
        assert np.array_equal(array[~unlabelled], plain[name][~unlabelled])
        assert np.array_equal(array[unlabelled], constant[name][unlabelled])
    if params is TOPK:
        assert masked["token_logits_topk/indices"][0, 1].tolist() == list(range(8))
        assert masked["token_logits_topk/values"][0, 1].astype(np.float32).tolist() == [-1024.0 * i for i in range(8)]
        assert masked["token_logits_topk/lse"][0, 1].tolist() == [0.0, 0.0]
    else:
        assert masked["token_logits_sampled/counts"][0, 1].tolist() == [12] + [0] * 11  # every draw is token 0
    assert "masked" not in keep.describe() and skip.describe()["masked"] == "skip"
    with pytest.raises(ConfigError, match="masked: skip stores positions without a label as a constant, so it needs"):
        skip.encode_at(logits, samples, views)  # a caller that forgot the labels would store the teacher's values
    codecs = {a.compressor for a in skip.layout((6, 40)).values()}
    assert codecs == {"zstd"} and (
        params is SAMPLED or {a.compressor for a in keep.layout((6, 40)).values()} == {"none"}
    )


def test_a_masked_chat_store_is_smaller_trains_the_same_and_verifies(tmp_path, chat):
    keep, skip = cache_chat(tmp_path / "keep.zarr", chat, "keep"), cache_chat(tmp_path / "skip.zarr", chat, "skip")
    assert keep.teacher("lm").targets["token_logits_topk"].params.get("masked") is None
    assert skip.teacher("lm").targets["token_logits_topk"].params["masked"] == "skip"  # part of the identity
    for name in ("token_logits_topk", "token_logits_sampled"):
        sizes = [
            sum(c.array_bytes(a.path) for a in c.teacher("lm").targets[name].arrays.values()) for c in (keep, skip)
        ]
        assert sizes[1] < sizes[0] / 2, (name, sizes)
    assert (chat.labels < 0).float().mean() > 0.6
    setup = LossSetup(num_classes=300, task="language-model")
    student = tiny_lm(300, seed=3).eval()
    data = [
        CachedTokenDataset(chat, c, teacher="lm", targets=["token_logits_topk", "token_logits_sampled"])
        for c in (keep, skip)
    ]
    for a, b in zip(*(batch_loader(d, batch_size=2, seed=0) for d in data), strict=True):
        a, b = a.to("cpu"), b.to("cpu")
        logits = student(a.inputs)
        for target in ("token_logits_topk", "token_logits_sampled"):
            for temperature in (1.0, 2.0) if target.endswith("topk") else (1.0,):
                loss = build_objective([("token_kd", 1.0, {"target": target, "temperature": temperature})], setup)
                term = loss.terms["token_kd"]
                same = [term(StepOutputs(logits, x.labels, teacher=x.targets)).item() for x in (a, b)]
                assert same[0] == same[1]  # the constant positions carry no label: no loss reads them
    report = recompute_check(
        skip, tiny_lm(300, seed=1).eval(), chat, TokenViews(), teacher_name="lm", pairs=3, progress=False
    )
    assert report.passed and report.targets["token_logits_topk"].exact == 3
    assert report.targets["token_logits_sampled"].exact == 3
