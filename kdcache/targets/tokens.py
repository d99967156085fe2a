"""A causal language model's per-token targets: top-k log-probabilities with the exact tail, or tokens sampled from
the teacher's distribution (Sparse Logit Sampling). Classes are the last dimension: logits are ``(B, L, V)``.

* ``topk``: the k largest log-probabilities log p_i = z_i − log Σ_v exp(z_v) of every position (fp16 by default)
  with their token ids (the narrowest unsigned integer the vocabulary allows), plus, per declared temperature T,
  ``lse_T = log Σ_v exp(log p_v / T)`` over the *whole* vocabulary (float32). softmax(z/T) is then exact on the k
  kept tokens, p_T(i) = exp(log p_i / T − lse_T), and the tail mass outside them is 1 − Σ_i p_T(i). Log-probs are
  logits shifted by a constant, so softmax at any T is unchanged, and fp16 is most precise where probability is
  high (log p near 0). Bytes per token: k · (2 + index bytes) + 4 · |T| (4 + 4k for fp16 values, a vocabulary of at
  most 65,536 and one temperature). Both are computed in float64 and rounded once to their storage dtype, so the
  stored bytes do not depend on the CPU's exp/log kernels (docs/store-format.md, "Where byte identity holds").
  Optional ``value_bits`` / ``index_bits`` pack the log-probs as b-bit codes of a power-of-two step and the ids in
  b bits (:mod:`kdcache.targets.packing`): 100 B/token at k = 32 and V = 128,256 with 7-bit codes and 17-bit ids.
* ``sampled``: ``samples`` draws per position from softmax(z/T) (Anshumann et al., ACL 2025, "Sparse Logit Sampling:
  Accelerating Knowledge Distillation in LLMs"), stored as the distinct token ids drawn with their counts. The
  weights counts/n are an unbiased estimate of the teacher distribution, so the cross-entropy to them is an unbiased
  estimate of the cross-entropy to the teacher (and its gradient of the KD gradient), where top-k is biased toward
  the head. Draws are inverse-CDF samples in float64 from uniforms of a Philox stream keyed by (``seed``, sample,
  view), stream 1 (:class:`~kdcache.views.KeyedRandom`): the same bytes whatever the batching, process or resume.
  Bytes per token: ``samples`` · (index bytes + 1) laid out; stored with blosc-zstd, since a position rarely draws
  ``samples`` distinct tokens and the empty slots (id 0, count 0) compress away.

Stage one records the teacher's vocabulary as ``vocab_size`` (stage two refuses another). Padded positions are stored
like any other (only the last sequence of a packed split has any) and masked by label in every loss. ``masked: skip``
(chat data trained on the assistant's tokens, where most labels are −100) stores every position without a label as the
encoding of one constant row, :func:`certain_logits`, instead of the teacher's, and compresses the top-k arrays with
blosc-zstd, so those positions cost almost nothing on disk; no loss reads them (they carry no label), and ``verify
--recompute`` compares them with the same constant, not with the teacher.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
from pydantic import Field, model_validator

from kdcache.capture import ModelOutputs
from kdcache.errors import ConfigError, TargetMismatchError
from kdcache.registry import LazyModule
from kdcache.targets import packing
from kdcache.targets.base import FLOAT_LIMITS, TARGETS, StoredArray, Target, TargetParams, required
from kdcache.targets.floats import FloatDtype, from_storage, log_sum_exp_float32, storage_dtype, to_storage, wide
from kdcache.targets.invariants import topk_problem
from kdcache.targets.logits import TopKLogits
from kdcache.targets.packing import check_step, pack_fields, packed_width, padding_is_zero, quantise, unpack_fields
from kdcache.views.rng import KeyedRandom

if TYPE_CHECKING:
    import torch
else:
    torch = LazyModule("torch")

SAMPLE_STREAM = 1  # the Philox counter word that keeps token draws off the views' numbers
CERTAIN_GAP = 1024.0  # nats between consecutive logits of the constant row stored at unlabelled positions
_CHUNK_ELEMENTS = 1 << 18  # positions × vocabulary in float64 at once: 2 MB stays in cache (2x faster than 32 MB);
# every result is per position, so the bytes do not depend on the block


@dataclass
class TokenTopK:
    """Decoded top-k: ``values`` (log-probs) and ``indices`` ``(B, L, k)``, ``lse`` ``(B, L, len(temperatures))``;
    ``vocab_size``, the teacher's vocabulary the store recorded (None when unknown): a student's logits must be
    exactly that wide, since the tail bin and the log-sum-exp are over the teacher's whole vocabulary."""

    values: torch.Tensor
    indices: torch.Tensor
    lse: torch.Tensor
    temperatures: tuple[float, ...]
    vocab_size: int | None = None

    def flat(self) -> TopKLogits:
        """Every position as one row, ``(B·L, k)`` (views, no copy): what the top-k losses take."""
        return TopKLogits(
            self.values.flatten(0, -2), self.indices.flatten(0, -2), self.lse.flatten(0, -2), self.temperatures
        )


@dataclass
class SampledTokens:
    """Decoded draws: distinct token ``ids`` and their ``counts`` ``(..., slots)`` out of ``samples`` draws per
    position from softmax(z / ``temperature``); unused slots have count 0; ``vocab_size`` as for
    :class:`TokenTopK`."""

    ids: torch.Tensor
    counts: torch.Tensor
    samples: int
    temperature: float
    vocab_size: int | None = None

    def flat(self) -> SampledTokens:
        """Every position as one row, ``(B·L, slots)``."""
        return SampledTokens(
            self.ids.flatten(0, -2), self.counts.flatten(0, -2), self.samples, self.temperature, self.vocab_size
        )

    @property
    def weights(self) -> torch.Tensor:
        """counts / samples: the unbiased estimate of the teacher's probabilities of ``ids``."""
        return self.counts / self.samples


class TokenLogitsParams(TargetParams):
    encoding: Literal["topk", "sampled"] = "topk"
    k: int | None = Field(None, gt=0, description="topk: tokens kept per position")
    dtype: FloatDtype = Field("float16", description="topk: storage of the log-probabilities")
    temperatures: tuple[float, ...] = Field((1.0,), description="topk: temperatures at which the tail is exact")
    samples: int | None = Field(None, gt=0, le=255, description="sampled: draws per position")
    sample_temperature: float = Field(1.0, gt=0, description="sampled: the temperature of the sampled distribution")
    seed: int = Field(0, ge=0, lt=2**128, description="sampled: key of the Philox stream the draws come from")
    vocab_size: int | None = Field(
        None, gt=1, description="the teacher's vocabulary (logits width); stage one records it"
    )
    value_bits: int | None = Field(None, ge=2, le=8, description="topk: log-probs as packed codes of this many bits")
    value_step: float = Field(0.125, description="topk with value_bits: nats per code (a power of two)")
    index_bits: int | None = Field(None, ge=1, le=32, description="topk: token ids packed in this many bits")
    masked: Literal["keep", "skip"] = Field(
        "keep", description="skip: positions without a label store a constant (top-k arrays then blosc-zstd)"
    )

    @model_validator(mode="after")
    def _consistent(self) -> TokenLogitsParams:
        given = self.model_fields_set
        if self.encoding == "topk" and self.k is None:
            raise ValueError("encoding topk needs k (the tokens kept per position)")
        if self.encoding == "sampled" and self.samples is None:
            raise ValueError("encoding sampled needs samples (the draws per position)")
        packed = {"value_bits", "value_step", "index_bits"}
        other = {"topk": {"samples", "sample_temperature", "seed"}, "sampled": {"k", "dtype", "temperatures", *packed}}
        if wrong := sorted(given & other[self.encoding]):
            raise ValueError(f"{wrong} do not apply to encoding {self.encoding}")
        if any(t <= 0 for t in self.temperatures):
            raise ValueError(f"temperatures must be positive, got {list(self.temperatures)}")
        if "value_step" in given and self.value_bits is None:
            raise ValueError("value_step applies only with value_bits (the packed log-prob codes)")
        check_step(self.value_step)
        return self

    @property
    def top_k(self) -> int:
        """``k`` of the topk encoding: the tokens kept per position."""
        return required(self.k, "k", self.encoding)

    @property
    def draws(self) -> int:
        """``samples`` of the sampled encoding: the draws per position."""
        return required(self.samples, "samples", self.encoding)


@TARGETS.register("token_logits")
class TokenLogitsTarget(Target):
    """Per-token targets of a causal LM whose logits are ``(B, L, V)``: ``token_logits_topk`` or
    ``token_logits_sampled`` (see the module docstring)."""

    kind = "token_logits"
    Params = TokenLogitsParams
    params: TokenLogitsParams

    def __init__(self, params: TokenLogitsParams) -> None:
        super().__init__(params)
        self.vocab_size = params.vocab_size

    @property
    def name(self) -> str:
        return f"token_logits_{self.params.encoding}"

    def extract(self, outputs: ModelOutputs) -> torch.Tensor:
        logits = outputs.logits
        if logits.dim() != 3:
            raise TargetMismatchError(
                f"token_logits needs (batch, positions, vocabulary) logits from a causal LM; the teacher returned "
                f"shape {tuple(logits.shape)}. Use kind logits for per-sample or per-pixel classes"
            )
        return logits.float()

    def value_dtype(self) -> str | None:
        return None  # log-probs are stored clamped to the dtype's range; only finiteness is checked

    def describe(self) -> dict[str, Any]:
        p = self.params
        keep = ["k", "dtype", "temperatures"] if p.encoding == "topk" else ["samples", "sample_temperature", "seed"]
        # the packed encodings are described only when used, so a store without them describes itself as before
        keep += [key for key in ("value_bits", "index_bits") if getattr(p, key) is not None]
        keep += ["value_step"] if p.value_bits is not None else []
        keep += ["masked"] if p.masked == "skip" else []
        described = {key: value for key, value in super().describe().items() if key in {"encoding", *keep}}
        return {**described, "vocab_size": self.vocab_size}

    def layout(self, sample_shape: tuple[int, ...]) -> dict[str, StoredArray]:
        if len(sample_shape) != 2:
            raise TargetMismatchError(f"token_logits stores (positions, vocabulary) logits, not shape {sample_shape}")
        positions, vocab = sample_shape
        if self.params.vocab_size is not None and vocab != self.params.vocab_size:
            raise TargetMismatchError(
                f"the teacher's logits cover {vocab} tokens, but {self.name} declares vocab_size "
                f"{self.params.vocab_size}; fix vocab_size or the teacher"
            )
        self.vocab_size = vocab
        ids = packing.index_dtype(vocab)
        p = self.params
        if p.encoding == "sampled":
            # a position rarely draws n distinct tokens: the empty slots (id 0, count 0) compress to almost nothing
            return {
                f"{self.name}/ids": StoredArray((positions, p.draws), ids, "zstd"),
                f"{self.name}/counts": StoredArray((positions, p.draws), "uint8", "zstd"),
            }
        if p.top_k > vocab:
            raise ConfigError(f"top-k with k={p.top_k} but the vocabulary has {vocab} tokens; use k <= {vocab}")
        arrays = {
            f"{self.name}/values": self._values_array(positions),
            f"{self.name}/indices": self._indices_array(positions, vocab),
            f"{self.name}/lse": StoredArray((positions, len(p.temperatures)), "float32"),
        }
        if p.masked == "skip":  # the constant rows only shrink a compressed array
            arrays = {rel: replace(a, compressor="zstd") for rel, a in arrays.items()}
        return arrays

    def _values_array(self, positions: int) -> StoredArray:
        p = self.params
        if p.value_bits is None:
            return StoredArray((positions, p.top_k), storage_dtype(p.dtype))
        meaning = (
            f"{p.top_k} codes of {p.value_bits} bits per position, little-endian bit-packed; "
            f"log p = -code * {p.value_step}"
        )
        return StoredArray((positions, packed_width(p.top_k, p.value_bits)), "uint8", meaning=meaning)

    def _indices_array(self, positions: int, vocab: int) -> StoredArray:
        p = self.params
        if p.index_bits is None:
            return StoredArray((positions, p.top_k), packing.index_dtype(vocab))
        if vocab > 1 << p.index_bits:
            raise ConfigError(
                f"index_bits {p.index_bits} holds ids below {1 << p.index_bits}, but the vocabulary has {vocab} "
                f"tokens; use index_bits >= {(vocab - 1).bit_length()}"
            )
        meaning = f"{p.top_k} token ids of {p.index_bits} bits per position, little-endian bit-packed"
        return StoredArray((positions, packed_width(p.top_k, p.index_bits)), "uint8", meaning=meaning)

    def encode(self, value: torch.Tensor) -> dict[str, np.ndarray]:
        if self.params.encoding == "sampled":
            raise ConfigError(
                "sampled token targets are drawn from a stream keyed by (sample, view); encode them with "
                "encode_at(value, samples, views), as stage one does"
            )
        p, name = self.params, self.name
        top = value.topk(p.top_k, dim=-1)  # log-probs are the logits shifted by a constant per position: same order
        log_p, lse = top_log_probs(value, top.values, p.temperatures)
        ids = top.indices.cpu().numpy()
        return {
            f"{name}/values": to_storage(log_p.clamp_min(-FLOAT_LIMITS[p.dtype]), p.dtype)
            if p.value_bits is None
            else pack_fields(quantise(log_p, p.value_bits, p.value_step), p.value_bits),
            f"{name}/indices": ids.astype(packing.index_dtype(value.shape[-1]))
            if p.index_bits is None
            else pack_fields(ids, p.index_bits),
            f"{name}/lse": lse,
        }

    def encode_at(
        self, value: torch.Tensor, samples: np.ndarray, views: np.ndarray, labels: torch.Tensor | None = None
    ) -> dict[str, np.ndarray]:
        value = self.masked(value, labels)
        if self.params.encoding == "topk":
            return self.encode(value)
        p, name = self.params, self.name
        positions = value.shape[1]
        uniforms = np.stack(
            [
                KeyedRandom(p.seed, sample=sample, view=view, stream=SAMPLE_STREAM).uniforms(positions * p.draws)
                for sample, view in zip(np.asarray(samples).tolist(), np.asarray(views).tolist(), strict=True)
            ]
        ).reshape(-1, p.draws)
        # every position of the batch in one pass (each position's draws depend on its own row only)
        drawn = draw_tokens(value.flatten(0, 1), torch.from_numpy(uniforms), p.sample_temperature)
        ids, counts = distinct_counts(drawn)
        shape = (*value.shape[:2], p.draws)
        return {
            f"{name}/ids": ids.astype(packing.index_dtype(value.shape[-1])).reshape(shape),
            f"{name}/counts": counts.astype(np.uint8).reshape(shape),
        }

    def masked(self, value: torch.Tensor, labels: torch.Tensor | None) -> torch.Tensor:
        """``value`` as ``masked: skip`` stores it: the logits of every position whose label is negative (the
        ignore index: no loss reads it) replaced by :func:`certain_logits`; unchanged with ``masked: keep``.
        ``verify --recompute`` replaces the live values the same way before comparing."""
        if self.params.masked == "keep":
            return value
        if labels is None:
            raise ConfigError(
                f"{self.name} with masked: skip stores positions without a label as a constant, so it needs each "
                "position's label: pass labels= to encode_at (stage one and verify --recompute do)"
            )
        unlabelled = (labels < 0).to(value.device)
        if not bool(unlabelled.any()):
            return value
        return torch.where(unlabelled[..., None], certain_logits(value.shape[-1], value.dtype, value.device), value)

    def decode(self, arrays: dict[str, torch.Tensor]) -> TokenTopK | SampledTokens:
        p, name = self.params, self.name
        if p.encoding == "sampled":
            ids, counts = arrays[f"{name}/ids"], arrays[f"{name}/counts"]
            return SampledTokens(ids.long(), counts.float(), p.draws, p.sample_temperature, self.vocab_size)
        values, lse = arrays[f"{name}/values"], arrays[f"{name}/lse"]
        if p.value_bits is None:
            values = from_storage(values, p.dtype)
        else:
            values = unpack_fields(values, p.top_k, p.value_bits).float() * -p.value_step
            lse = kept_lse(values, lse, p.temperatures)
        indices = arrays[f"{name}/indices"]
        indices = indices.long() if p.index_bits is None else unpack_fields(indices, p.top_k, p.index_bits)
        return TokenTopK(values, indices, lse, p.temperatures, self.vocab_size)

    def checked_arrays(self) -> tuple[str, ...]:
        packed = [a for a, bits in (("values", self.params.value_bits), ("indices", self.params.index_bits)) if bits]
        return tuple(f"{self.name}/{a}" for a in ([*packed, "lse"] if self.params.value_bits else packed))

    def stored_problem(self, arrays: dict[str, np.ndarray], value_shape: tuple[int, ...]) -> str:
        """Packed top-k: padding bits zero, every id below the vocabulary, and the decoded codes' mass at every
        temperature in [k/C, 1] up to the quantiser's step (:func:`~kdcache.targets.invariants.topk_problem`)."""
        p, name = self.params, self.name
        for array, bits in (("values", p.value_bits), ("indices", p.index_bits)):
            if bits and not padding_is_zero(arrays[f"{name}/{array}"], p.top_k, bits):
                return f"{array} has bits set after its {p.top_k} fields of {bits} bits: not written by kdcache"
        if p.index_bits:
            ids = unpack_fields(torch.from_numpy(np.asarray(arrays[f"{name}/indices"])), p.top_k, p.index_bits)
            if ids.numel() and int(ids.max()) >= value_shape[-1]:
                return f"token id {int(ids.max())} is outside the teacher's vocabulary of {value_shape[-1]}"
        if not p.value_bits:
            return ""
        codes = unpack_fields(torch.from_numpy(np.asarray(arrays[f"{name}/values"])), p.top_k, p.value_bits)
        values = (codes.double() * -p.value_step).numpy()
        return topk_problem(values, arrays[f"{name}/lse"], p.temperatures, value_shape[-1], "float64", p.value_step / 2)


def certain_logits(vocab: int, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """The constant row ``masked: skip`` stores at unlabelled positions: logits ``−1024·v`` for token ``v``, a teacher
    certain of token 0. Its encoding is exact and valid for every check: top-k ids ``0..k−1`` with log-probs
    ``0, −1024, −2048, …`` and lse 0 (mass 1); every draw is token 0 (ids 0, counts ``samples``) at any sample temperature below 25."""
    return torch.arange(vocab, dtype=dtype, device=device) * -CERTAIN_GAP


def top_log_probs(
    logits: torch.Tensor, top_values: torch.Tensor, temperatures: Sequence[float]
) -> tuple[torch.Tensor, np.ndarray]:
    """For ``logits`` ``(..., V)`` and the k largest of them ``top_values`` ``(..., k)``: their log-probabilities
    log p_i = z_i − log Σ_v exp(z_v) (float64) and lse_T = log Σ_v exp(log p_v / T) at every temperature (float32,
    ``(..., len(temperatures))``). Computed in float64 a block of positions at a time (bounded memory), so the
    stored roundings do not depend on the CPU's exp/log kernels (:func:`kdcache.targets.floats.wide`)."""
    vocab, k = logits.shape[-1], top_values.shape[-1]
    rows, top_rows = logits.reshape(-1, vocab), top_values.reshape(-1, k)
    block = max(1, _CHUNK_ELEMENTS // vocab)
    log_p, lse = [], []
    for start in range(0, max(1, len(rows)), block):
        wide_rows = wide(rows[start : start + block])
        log_z = torch.logsumexp(wide_rows, dim=-1, keepdim=True)
        log_p.append(wide(top_rows[start : start + block]) - log_z)
        lse.append(log_sum_exp_float32(wide_rows - log_z, temperatures, dim=-1))
    return torch.cat(log_p).view(top_values.shape), np.concatenate(lse).reshape(*logits.shape[:-1], -1)


def kept_lse(values: torch.Tensor, lse: torch.Tensor, temperatures: tuple[float, ...]) -> torch.Tensor:
    """lse_T raised where the rounded top-k values hold more than all the mass: quantised codes can sum past 1, and
    the tail bin 1 − Σ p_T(i) must stay ≥ 0 (a row whose mass is ≤ 1 keeps its exact lse)."""
    temps = torch.tensor(temperatures, dtype=values.dtype, device=values.device)
    kept = torch.logsumexp(values[..., None, :] / temps[:, None], dim=-1)
    return torch.maximum(lse, kept.to(lse.dtype))


def draw_tokens(logits: torch.Tensor, uniforms: torch.Tensor, temperature: float) -> torch.Tensor:
    """Token ids drawn from softmax(logits / T) by inverse CDF: ``logits`` ``(L, V)``, ``uniforms`` ``(L, n)`` in
    [0, 1), computed in float64 a block of positions at a time; returns ``(L, n)`` int64."""
    vocab = logits.shape[-1]
    block = max(1, _CHUNK_ELEMENTS // vocab)
    out = []
    for start in range(0, len(logits), block):
        cdf = torch.softmax(logits[start : start + block].double() / temperature, dim=-1).cumsum(dim=-1)
        points = uniforms[start : start + block].to(cdf.device) * cdf[:, -1:]
        # the first token whose cumulative probability exceeds the point: zero-probability tokens are never drawn
        out.append(torch.searchsorted(cdf, points, right=True).clamp_max(vocab - 1))
    return torch.cat(out).cpu()


def distinct_counts(drawn: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
    """Per row of ``drawn`` ``(L, n)``: the distinct ids in ascending order and how often each was drawn, in the
    first slots; the remaining slots hold id 0 with count 0."""
    ordered, _ = drawn.sort(dim=1)
    first = torch.ones_like(ordered, dtype=torch.bool)
    first[:, 1:] = ordered[:, 1:] != ordered[:, :-1]
    slot = first.long().cumsum(dim=1) - 1
    counts = torch.zeros_like(ordered).scatter_add_(1, slot, torch.ones_like(ordered))
    ids = torch.zeros_like(ordered).scatter_(1, slot, ordered)
    return ids.numpy(), counts.numpy()
