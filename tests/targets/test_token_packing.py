"""Sub-16-bit top-k token targets: ids packed in b bits (exact for every id), log-probs as codes of a power-of-two
step (within half a step of the float64 reference), decoded into the same TokenTopK every loss takes, corrupt codes
refused, and a real store built and read through the public API."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from pydantic import ValidationError

from kdcache import CachedTokenDataset, batch_loader, open_store
from kdcache.errors import ConfigError
from kdcache.losses import token_kd_divergence
from kdcache.precompute import precompute
from kdcache.targets import build_target
from kdcache.targets.packing import pack_fields, packed_width, unpack_fields
from kdcache.targets.tokens import top_log_probs
from kdcache.tools.recompute import recompute_check
from kdcache.views import TokenViews

PACKED = {"k": 8, "value_bits": 7, "index_bits": 17}
V = 128_256


@pytest.mark.parametrize("bits", [17, 24])
def test_every_id_of_a_128k_vocabulary_round_trips_exactly(bits) -> None:
    ids = np.arange(V, dtype=np.int64)
    ids = np.concatenate([ids, np.zeros(-len(ids) % 32, dtype=np.int64)]).reshape(-1, 32)
    packed = pack_fields(ids, bits)
    assert packed.dtype == np.uint8 and packed.shape == (len(ids), packed_width(32, bits)) == (len(ids), 4 * bits)
    assert np.array_equal(unpack_fields(torch.from_numpy(packed), 32, bits).numpy(), ids)
    # the layout is numpy's little-endian bit order: a plain zarr reader decodes with unpackbits
    planes = np.unpackbits(packed, axis=-1, bitorder="little")[:, : 32 * bits].reshape(len(ids), 32, bits)
    assert np.array_equal(planes.astype(np.int64) @ (1 << np.arange(bits)), ids)


def test_a_code_wider_than_its_field_is_refused() -> None:
    with pytest.raises(ConfigError, match="does not fit 3 bits"):
        pack_fields(np.array([[8]]), 3)


def packed_and_reference(value: torch.Tensor, **params):
    target, ref = build_target("token_logits", {**PACKED, **params}), build_target("token_logits", {"k": 8})
    out = []
    for t in (target, ref):
        t.layout(tuple(value.shape[1:]))
        out.append(t.decode({k: torch.from_numpy(v) for k, v in t.encode(value).items()}))
    return target, *out


def test_codes_are_within_half_a_step_of_the_float64_log_probs() -> None:
    value = torch.randn(3, 20, 5000, generator=torch.Generator().manual_seed(1)) * 3
    _, top, _ = packed_and_reference(value)
    log_p, _ = top_log_probs(value, value.topk(8, dim=-1).values, [1.0])
    clipped = log_p.clamp_min(-127 * 0.125)
    assert (top.values.double() - clipped).abs().max() <= 0.0625 + 1e-12
    assert torch.equal(top.indices, value.topk(8, dim=-1).indices)


def test_decoded_codes_keep_the_tail_non_negative_and_the_loss_near_fp16() -> None:
    """The rounded codes can hold more than all the mass; decoding raises lse_T so the tail is ≥ 0. The KD loss on
    the packed target is within 2 % of the fp16 one (7-bit codes at step 1/8: p within e^±1/16 per token)."""
    gen = torch.Generator().manual_seed(2)
    value = torch.randn(2, 16, 3000, generator=gen) * 6
    value[0, :, 7] += 40  # confident rows: the kept mass is ~1, where rounding up would overflow it
    _, top, ref = packed_and_reference(value, temperatures=[1.0, 2.0])
    for i, t in enumerate((1.0, 2.0)):
        mass = (top.values / t - top.lse[..., i : i + 1]).exp().sum(-1)
        assert (mass <= 1 + 1e-6).all()
    student, labels = torch.randn(2, 16, 3000, generator=gen), torch.zeros(2, 16, dtype=torch.long)
    packed_loss, fp16_loss = (token_kd_divergence(student, labels, x).item() for x in (top, ref))
    assert abs(packed_loss - fp16_loss) <= 0.02 * fp16_loss


def test_corrupt_codes_are_refused() -> None:
    value = torch.randn(1, 6, 400, generator=torch.Generator().manual_seed(3)) * 3
    target = build_target("token_logits", {**PACKED, "index_bits": 9, "value_bits": 5, "value_step": 0.5})
    target.layout((6, 400))
    good = target.encode(value)
    assert target.stored_problem({k: v[0] for k, v in good.items()}, (6, 400)) == ""
    ids, codes = good["token_logits_topk/indices"].copy(), good["token_logits_topk/values"].copy()
    ids[0, 0, :2] = 0xFF  # id 511 in a vocabulary of 400
    problem = target.stored_problem({**good, "token_logits_topk/indices": ids}, (6, 400))
    assert "outside the teacher's vocabulary of 400" in problem
    codes[0, 0] = 0  # every code 0: eight tokens of probability 1 each
    problem = target.stored_problem({**good, "token_logits_topk/values": codes}, (6, 400))
    assert "hold 8 of the probability" in problem


def test_padding_bits_are_refused() -> None:
    value = torch.randn(1, 4, 400, generator=torch.Generator().manual_seed(4)) * 3
    target = build_target("token_logits", {"k": 3, "index_bits": 9})  # 27 bits in 4 bytes: 5 spare
    target.layout((4, 400))
    arrays = target.encode(value)
    arrays["token_logits_topk/indices"][0, 1, -1] |= 0x80
    assert "bits set after its 3 fields" in target.stored_problem(arrays, (4, 400))


@pytest.mark.parametrize(
    ("params", "message"),
    [
        ({"k": 4, "value_step": 0.1, "value_bits": 7}, "power of two"),
        ({"k": 4, "value_step": 0.25}, "only with value_bits"),
        ({"encoding": "sampled", "samples": 4, "index_bits": 17}, "do not apply"),
    ],
)
def test_invalid_packed_parameters(params, message) -> None:
    with pytest.raises(ValidationError, match=message):
        build_target("token_logits", params)


def test_too_few_index_bits_name_the_fix() -> None:
    with pytest.raises(ConfigError, match="use index_bits >= 17"):
        build_target("token_logits", {"k": 4, "index_bits": 16}).layout((4, V))


def test_a_packed_store_reads_through_the_public_api(tmp_path, lm_teacher, lm_train) -> None:
    stores = {}
    for name, params in {"packed": {**PACKED, "index_bits": 9}, "fp16": {"k": 8}}.items():
        precompute(
            lm_teacher,
            lm_train,
            str(tmp_path / f"{name}.zarr"),
            targets=[build_target("token_logits", params)],
            views=TokenViews(),
            num_classes=300,
            teacher_name="lm",
            shard_samples=64,
            batch_size=16,
            progress=False,
        )
        data = CachedTokenDataset(
            lm_train, open_store(str(tmp_path / f"{name}.zarr")), teacher="lm", targets=["token_logits_topk"]
        )
        stores[name] = next(iter(batch_loader(data, batch_size=8, seed=0))).to("cpu")
    packed_cache = open_store(str(tmp_path / "packed.zarr"))
    assert packed_cache.check_digests() == []  # digests, pinned attributes bound to the records, every row's invariants
    report = recompute_check(
        packed_cache, lm_teacher, lm_train, TokenViews(), teacher_name="lm", pairs=8, progress=False
    )
    assert report.passed and report.targets["token_logits_topk"].exact == 8  # the live teacher's bytes, every pair
    assert report.targets["token_logits_topk"].max_abs_error <= 0.0625  # codes within half a step of live log p
    packed, fp16 = (stores[n].targets["token_logits_topk"] for n in ("packed", "fp16"))
    assert torch.equal(packed.indices, fp16.indices) and packed.vocab_size == 300
    assert (packed.values - fp16.values.float()).abs().max() <= 0.0625 + 2e-3
    student = torch.randn(8, *stores["fp16"].labels.shape[1:], 300, generator=torch.Generator().manual_seed(5))
    losses = [token_kd_divergence(student, stores[n].labels, t).item() for n, t in (("packed", packed), ("fp16", fp16))]
    assert abs(losses[0] - losses[1]) <= 0.02 * losses[1]


def test_the_token_fidelity_report_measures_a_real_llama() -> None:
    """A real (random, seeded) transformers Llama at V = 5,000: today's layout is 4 + 4k bytes per token, and every
    packed encoding keeps the top-k KL of today's within 1 %."""
    from kdcache.tools.token_fidelity import measure, tiny_llama

    ids = torch.from_numpy(np.random.default_rng(0).integers(0, 5000, size=(2, 1, 64)))
    rows = measure(tiny_llama(5000, 0, 0.5), tiny_llama(5000, 1, 0.02), list(ids), k=8, progress=False)
    assert rows[0]["bytes/token"] == 4 + 4 * 8 and rows[0]["vs today"] == 1.0
    assert {r["encoding"]: r["bytes/token"] for r in rows}["7-bit values + 17-bit ids"] == 4 + 7 + 17
    assert all(0 < r["KL kept"] <= 1.01 and abs(r["vs today"] - 1) < 0.01 for r in rows)
