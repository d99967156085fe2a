"""Token targets: top-k log-probs with the exact tail per temperature, and tokens sampled from the teacher with a
keyed stream (same bytes whatever the batching, unbiased weights)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from pydantic import ValidationError

from kdcache.capture import ModelOutputs
from kdcache.errors import ConfigError, TargetMismatchError
from kdcache.targets import SampledTokens, TokenTopK, build_target, tokens
from kdcache.targets.floats import LSE_GRID
from kdcache.targets.packing import index_dtype
from kdcache.targets.tokens import distinct_counts, draw_tokens, top_log_probs


def logits(batch: int = 2, positions: int = 5, vocab: int = 40, seed: int = 0) -> torch.Tensor:
    return torch.randn(batch, positions, vocab, generator=torch.Generator().manual_seed(seed)) * 3


def encoded(target, value):
    target.layout(tuple(value.shape[1:]))
    return target.encode_at(value, np.arange(len(value)), np.zeros(len(value), dtype=np.int64))


def decoded(target, value):
    return target.decode({k: torch.from_numpy(v) for k, v in encoded(target, value).items()})


@pytest.mark.parametrize(("vocab", "dtype"), [(256, "uint8"), (257, "uint16"), (65536, "uint16"), (65537, "uint32")])
def test_token_ids_use_the_narrowest_unsigned_integer(vocab, dtype) -> None:
    assert index_dtype(vocab) == dtype


def test_topk_layout_costs_4_plus_4k_bytes_per_token_in_fp16() -> None:
    target = build_target("token_logits", {"k": 32})
    arrays = target.layout((128, 1024))
    per_token = sum(np.dtype(a.dtype).itemsize * int(np.prod(a.sample_shape)) for a in arrays.values()) / 128
    assert per_token == 4 + 4 * 32
    assert {k: a.dtype for k, a in arrays.items()} == {
        "token_logits_topk/values": "float16",
        "token_logits_topk/indices": "uint16",
        "token_logits_topk/lse": "float32",
    }
    assert target.describe() == {
        "encoding": "topk",
        "k": 32,
        "dtype": "float16",
        "temperatures": [1.0],
        "vocab_size": 1024,
    }


def test_topk_stores_log_probs_and_the_exact_lse_at_every_temperature() -> None:
    value = logits()
    target = build_target("token_logits", {"k": 6, "temperatures": [1.0, 2.0], "dtype": "float32"})
    top = decoded(target, value)
    assert isinstance(top, TokenTopK) and top.values.shape == (2, 5, 6) and top.lse.shape == (2, 5, 2)
    log_p = torch.log_softmax(value.double(), dim=-1)
    expected = log_p.topk(6, dim=-1)
    assert torch.equal(top.indices, expected.indices)
    assert torch.allclose(top.values.double(), expected.values, atol=1e-6)
    # softmax(z/T) on the kept tokens is exp(log p / T - lse_T), exactly as from the full logits
    p_half = torch.softmax(value.double() / 2, dim=-1).gather(-1, expected.indices)
    assert torch.allclose((top.values / 2 - top.lse[..., 1:]).exp().double(), p_half, atol=1e-6)
    assert torch.allclose(top.lse[..., 0], torch.zeros(2, 5), atol=1e-6)  # log-probs at T = 1 sum to 1


def test_log_probs_and_lse_are_float64_rounded_once_block_by_block(monkeypatch: pytest.MonkeyPatch) -> None:
    """Blocks of positions (here 3 of 4, 4 and 2 positions) give the float64 log-probs and the float32-rounded lse of
    the whole; the lse at T = 1 (log-probs sum to exactly 1) is stored as exactly 0, not as float64 noise."""
    value = logits(positions=5, vocab=300)
    whole_p, whole_lse = top_log_probs(value, value.topk(8, dim=-1).values, [1.0, 0.5])
    monkeypatch.setattr(tokens, "_CHUNK_ELEMENTS", 4 * 300)
    log_p, lse = top_log_probs(value, value.topk(8, dim=-1).values, [1.0, 0.5])
    assert log_p.dtype == torch.float64 and torch.equal(log_p, whole_p) and lse.tobytes() == whole_lse.tobytes()
    reference = torch.log_softmax(value.double(), dim=-1)
    torch.testing.assert_close(log_p, reference.topk(8, dim=-1).values, rtol=0, atol=1e-12)
    at_half = torch.logsumexp(reference / 0.5, dim=-1).numpy()
    assert (np.abs(lse[..., 1] - at_half) <= 0.5 * np.spacing(np.abs(at_half).astype(np.float32)) + LSE_GRID).all()
    assert lse.shape == (2, 5, 2) and lse.dtype == np.float32 and not lse[..., 0].any()


def test_fp16_log_probs_keep_the_head_precise() -> None:
    value = logits(vocab=300) * 4  # confident: top log-probs near 0
    top = decoded(build_target("token_logits", {"k": 300}), value)
    exact = torch.log_softmax(value.double(), dim=-1).gather(-1, top.indices)
    head = exact > -1
    assert (top.values.double() - exact)[head].abs().max() < 1e-3


def test_sampled_draws_are_keyed_by_sample_and_view_not_by_batch() -> None:
    value = logits(batch=4)
    target = build_target("token_logits", {"encoding": "sampled", "samples": 16, "seed": 7})
    target.layout(tuple(value.shape[1:]))
    samples, views = np.array([10, 11, 12, 13]), np.zeros(4, dtype=np.int64)
    whole = target.encode_at(value, samples, views)
    for i in range(4):
        one = target.encode_at(value[i : i + 1], samples[i : i + 1], views[i : i + 1])
        assert all(np.array_equal(one[k][0], whole[k][i]) for k in whole)
    other = target.encode_at(value, samples + 1, views)
    assert not np.array_equal(other["token_logits_sampled/ids"], whole["token_logits_sampled/ids"])
    counts = whole["token_logits_sampled/counts"]
    assert counts.dtype == np.uint8 and (counts.sum(axis=-1) == 16).all()


def test_distinct_counts_packs_ids_in_ascending_order() -> None:
    ids, counts = distinct_counts(torch.tensor([[5, 3, 5, 9, 3, 5], [2, 2, 2, 2, 2, 2]]))
    assert ids.tolist() == [[3, 5, 9, 0, 0, 0], [2, 0, 0, 0, 0, 0]]
    assert counts.tolist() == [[2, 3, 1, 0, 0, 0], [6, 0, 0, 0, 0, 0]]


def test_sampled_weights_are_an_unbiased_estimate_of_the_teacher_distribution() -> None:
    value = torch.tensor([[2.0, 1.0, 0.0, -1.0, float("-inf")] * 1]).repeat(4000, 1)  # one position, 4000 times
    uniforms = torch.from_numpy(np.random.default_rng(0).random((4000, 8)))
    drawn = draw_tokens(value, uniforms, temperature=2.0)
    frequency = torch.bincount(drawn.flatten(), minlength=5).double() / drawn.numel()
    p = torch.softmax(value.double() / 2, dim=-1)
    assert frequency[4] == 0  # a token of probability 0 is never drawn
    assert torch.allclose(frequency, p, atol=0.01)  # 32,000 draws: standard error below 0.003


def test_decoded_samples_give_weights() -> None:
    value = logits()
    target = build_target("token_logits", {"encoding": "sampled", "samples": 10})
    drawn = decoded(target, value)
    assert isinstance(drawn, SampledTokens) and drawn.ids.shape == (2, 5, 10)
    assert torch.allclose(drawn.weights.sum(dim=-1), torch.ones(2, 5))
    assert drawn.flat().ids.shape == (10, 10)


def test_refusals_name_the_fix() -> None:
    with pytest.raises(TargetMismatchError, match=r"needs \(batch, positions, vocabulary\) logits"):
        build_target("token_logits", {"k": 2}).extract(ModelOutputs(logits=torch.zeros(4, 10)))
    with pytest.raises(TargetMismatchError, match="cover 40 tokens, but token_logits_topk declares vocab_size 50"):
        build_target("token_logits", {"k": 2, "vocab_size": 50}).layout((5, 40))
    with pytest.raises(ConfigError, match="k=64 but the vocabulary has 40 tokens"):
        build_target("token_logits", {"k": 64}).layout((5, 40))
    with pytest.raises(ConfigError, match="encode them with encode_at"):
        build_target("token_logits", {"encoding": "sampled", "samples": 4}).encode(logits())


@pytest.mark.parametrize(
    ("params", "message"),
    [
        ({}, "encoding topk needs k"),
        ({"encoding": "sampled"}, "encoding sampled needs samples"),
        ({"k": 4, "samples": 8}, r"\['samples'\] do not apply to encoding topk"),
        ({"encoding": "sampled", "samples": 8, "k": 4}, r"\['k'\] do not apply to encoding sampled"),
        ({"encoding": "sampled", "samples": 300}, "less than or equal to 255"),
    ],
    ids=["topk-without-k", "sampled-without-samples", "samples-on-topk", "k-on-sampled", "too-many-samples"],
)
def test_invalid_parameters(params, message) -> None:
    with pytest.raises(ValidationError, match=message):
        build_target("token_logits", params)
