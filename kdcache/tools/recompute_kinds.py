"""Per-kind comparisons of ``verify --recompute``: one batch of a cached target against the live teacher.

The live value is stored the way the cache stores it (``encode_at`` then ``decode``, the same code stage one ran),
so an exact replay on the machine that built the store differs by 0 whatever the encoding. On another machine the
teacher's float32 outputs move in their last bits; one rounding of the storage dtype may then flip, so every bound
is ``atol + rtol·|live| + step``, where ``step`` is what one rounding of the stored value can move it (a float
dtype's spacing, an int8 row's scale). Token ids and draw counts are integers and compared exactly.

* dense tensors (dense and int8 logits, features, embeddings, FSP matrices): elementwise error and per-pair cosine.
* top-k (``logits`` top-k, ``token_logits`` top-k, one row per sample or per token): each kept id's stored value
  against the live value *of that id* rounded to the storage dtype (so equal values in either order agree), every
  kept id in the live top k, or tied with the live k-th value within the bound, no id twice, and the stored
  log-sum-exp at each declared temperature T within the bound plus the values' step / T (lse is 1-Lipschitz in
  every value / T).
* sampled tokens: the draws are repeated from the same keyed uniforms (``encode_at``) and the distinct ids and
  counts of every position compared exactly; the fraction of positions that differ must not exceed
  ``Tolerance.sampled_mismatch`` (0 by default: on the same machine the draws are identical).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar

import numpy as np
import torch

from kdcache.errors import TargetMismatchError
from kdcache.targets import SampledTokens, Target, TargetParams, TokenTopK, TopKLogits
from kdcache.targets.base import FLOAT_LIMITS
from kdcache.targets.floats import FloatDtype, from_storage, to_storage
from kdcache.targets.logits import LogitsParams
from kdcache.targets.tokens import TokenLogitsParams, TokenLogitsTarget

P = TypeVar("P", bound=TargetParams)


@dataclass(frozen=True)
class Tolerance:
    """A target passes when every stored value satisfies ``|cached - live| <= atol + rtol·|live| + step`` (live =
    the teacher's output stored the way the cache stores it, step = one rounding of its storage), every dense pair's
    cosine similarity is at least ``min_cosine``, and at most a ``sampled_mismatch`` fraction of sampled positions
    drew other tokens."""

    atol: float = 1e-3
    rtol: float = 1e-2
    min_cosine: float = 0.999
    sampled_mismatch: float = 0.0


@dataclass
class TargetFidelity:
    """How one cached target compares with the live teacher over the checked pairs. ``None`` marks a figure that
    does not apply to the kind (cosine of sparse encodings, log-sum-exp of dense ones)."""

    target: str
    kind: str = ""
    pairs: int = 0
    max_abs_error: float = 0.0
    encoding_error: float | None = None
    lse_error: float | None = None
    min_cosine: float | None = None
    cosine_sum: float = 0.0
    exact: int = 0
    ids_same: int = 0
    ids_total: int = 0
    sampled: bool = False
    within_tolerance: bool = True

    @property
    def mean_cosine(self) -> float | None:
        return None if self.min_cosine is None else self.cosine_sum / max(self.pairs, 1)

    @property
    def ids_agreement(self) -> float | None:
        """Top-k: the fraction of kept ids in the live top k; sampled: the fraction of positions whose draws agree."""
        return None if self.ids_total == 0 else self.ids_same / self.ids_total

    def passed(self, tolerance: Tolerance) -> bool:
        if self.sampled:
            return self.within_tolerance and 1 - (self.ids_agreement or 0.0) <= tolerance.sampled_mismatch
        return self.within_tolerance and (self.min_cosine is None or self.min_cosine >= tolerance.min_cosine)


def params_as(target: Target, params: type[P]) -> P:
    """``target``'s parameters, refused unless they are ``params`` (the kind a comparison or a report reads)."""
    if not isinstance(target.params, params):
        raise TargetMismatchError(
            f"target {target.name!r} (kind {target.kind}) has {type(target.params).__name__} parameters, where "
            f"{params.__name__} are needed; leave it out with --targets (targets=)"
        )
    return target.params


def kind_label(target: Target) -> str:
    """A short description of how a target is stored, for the report: ``logits top-5 float16``, ``fsp bfloat16``."""
    p = target.params
    if isinstance(p, TokenLogitsParams) and p.encoding == "sampled":
        return f"{target.kind} sampled n={p.samples}"
    if isinstance(p, LogitsParams | TokenLogitsParams) and p.encoding == "topk":
        return f"{target.kind} top-{p.k} {p.dtype}"
    encoding = getattr(p, "encoding", "dense")
    return f"{target.kind} int8" if encoding == "int8" else f"{target.kind} {getattr(p, 'dtype', '')}".rstrip()


def rounding_step(values: torch.Tensor, dtype: str) -> torch.Tensor:
    """An upper bound of the spacing of ``dtype`` at ``values``: how far one rounding flip can move a stored value."""
    info = torch.finfo(getattr(torch, dtype))
    return info.eps * values.abs() + info.eps * info.tiny


def compare(
    out: TargetFidelity,
    target: Target,
    arrays: dict[str, np.ndarray],
    live: torch.Tensor,
    samples: np.ndarray,
    views: np.ndarray,
    tolerance: Tolerance,
    labels: torch.Tensor | None = None,
) -> None:
    """Fold one batch of ``target`` into ``out``: its cached ``arrays`` against ``live``, the teacher's float32 value
    for the same (sample, view) pairs. Positions a token target stores as a constant (``masked: skip``, by
    ``labels``) are compared with that constant, not with the teacher: no loss reads them."""
    live = live.float().cpu()
    if isinstance(target, TokenLogitsTarget):
        live = target.masked(live, labels)
    encoded = target.encode_at(live, samples, views, labels=labels)
    mine = {rel: torch.from_numpy(np.ascontiguousarray(a)) for rel, a in encoded.items()}
    cached = target.decode({rel: torch.from_numpy(np.ascontiguousarray(a)) for rel, a in arrays.items()})
    stored = target.decode(mine)
    out.pairs += len(live)
    if isinstance(cached, torch.Tensor):
        _dense(out, cached.float(), stored.float(), live, _dense_step(target, mine, stored), tolerance)
    elif isinstance(cached, TopKLogits):
        _topk(out, cached, stored, live, params_as(target, LogitsParams).dtype, len(live), tolerance)
    elif isinstance(cached, TokenTopK):
        p = params_as(target, TokenLogitsParams)
        dtype = p.dtype
        # packed codes (value_bits) are within half a step of the log-prob, clipped at the last code
        limit = FLOAT_LIMITS[dtype] if p.value_bits is None else ((1 << p.value_bits) - 1) * p.value_step
        full = torch.log_softmax(live, dim=-1).clamp_min(-limit).flatten(0, -2)
        quantum = 0.0 if p.value_bits is None else p.value_step / 2
        _topk(out, cached.flat(), stored.flat(), full, dtype, len(live), tolerance, quantum)
    elif isinstance(cached, SampledTokens):
        _sampled(out, cached.flat(), stored.flat(), live.shape[-1], len(live))
    else:
        raise TargetMismatchError(
            f"verify --recompute has no comparison for target {target.name!r}, which decodes to "
            f"{type(cached).__name__}; leave it out with --targets (targets=) and check its files with "
            "`kdcache verify STORE`"
        )


def _dense_step(target: Target, mine: dict[str, torch.Tensor], stored: torch.Tensor) -> torch.Tensor:
    """One rounding of a dense target's storage at each stored value: an int8 row's scale, a float dtype's spacing
    (0 for a target kind that does not say its storage dtype)."""
    if getattr(target.params, "encoding", "dense") == "int8":
        return mine[f"{target.name}/scale"][:, None]
    dtype = target.value_dtype()
    return torch.zeros(()) if dtype is None else rounding_step(stored, dtype)


def _fold(current: float | None, new: float, pick: Callable[[float, float], float] = max) -> float:
    """``current`` folded with ``new`` (``None`` means nothing seen yet)."""
    return new if current is None else pick(current, new)


def _dense(
    out: TargetFidelity,
    cached: torch.Tensor,
    stored: torch.Tensor,
    live: torch.Tensor,
    step: torch.Tensor,
    tolerance: Tolerance,
) -> None:
    """Elementwise error, encoding error and per-pair cosine of a dense target."""
    a, b = cached.reshape(len(cached), -1), stored.reshape(len(cached), -1)
    step = step.expand_as(stored).reshape(len(cached), -1)
    diff = (a - b).abs()
    cosine = torch.nn.functional.cosine_similarity(a.double(), b.double(), dim=1, eps=1e-12)
    out.max_abs_error = max(out.max_abs_error, float(diff.max()))
    out.encoding_error = _fold(out.encoding_error, float((a - live.reshape(len(live), -1)).abs().max()))
    out.min_cosine = _fold(out.min_cosine, float(cosine.min()), min)
    out.cosine_sum += float(cosine.sum())
    out.exact += int((diff == 0).all(dim=1).sum())
    out.within_tolerance &= bool((diff <= tolerance.atol + tolerance.rtol * b.abs() + step).all())


def _topk(
    out: TargetFidelity,
    cached: TopKLogits,
    stored: TopKLogits,
    full: torch.Tensor,
    dtype: FloatDtype,
    pairs: int,
    tolerance: Tolerance,
    quantum: float = 0.0,
) -> None:
    """Top-k rows (one per sample or per token): values by id, id membership up to ties, and the tail's lse.
    ``quantum``: the largest error of a packed code (half its step; 0 for float values)."""
    at = full.gather(1, cached.indices)  # the live float32 value of every kept id
    rounded = at if quantum else from_storage(torch.from_numpy(to_storage(at, dtype)), dtype)
    step = rounding_step(rounded, dtype) + quantum
    diff = (cached.values - rounded).abs()
    values_ok = diff <= tolerance.atol + tolerance.rtol * rounded.abs() + step
    kth = full.gather(1, stored.indices).amin(dim=1, keepdim=True)  # the live k-th value
    in_live = at >= kth
    tied = at >= kth - (tolerance.atol + tolerance.rtol * kth.abs() + rounding_step(kth, dtype))
    ordered = cached.indices.sort(dim=1).values
    distinct = (ordered[:, 1:] != ordered[:, :-1]).all(dim=1)
    temperatures = torch.tensor(cached.temperatures, dtype=torch.float32)
    lse_diff = (cached.lse - stored.lse).abs()
    lse_bound = (
        tolerance.atol
        + (tolerance.rtol + torch.finfo(torch.float32).eps) * stored.lse.abs()
        + step.amax(dim=1, keepdim=True) / temperatures
    )
    exact = (cached.values == stored.values).all(1) & (cached.indices == stored.indices).all(1)
    exact &= (cached.lse == stored.lse).all(1)
    out.max_abs_error = max(out.max_abs_error, float(diff.max()))
    out.encoding_error = _fold(out.encoding_error, float((cached.values - at).abs().max()))
    out.lse_error = _fold(out.lse_error, float(lse_diff.max()))
    out.exact += int(exact.view(pairs, -1).all(dim=1).sum())
    out.ids_same += int(in_live.sum())
    out.ids_total += in_live.numel()
    out.within_tolerance &= bool(values_ok.all() & tied.all() & distinct.all() & (lse_diff <= lse_bound).all())


def _sampled(out: TargetFidelity, cached: SampledTokens, drawn: SampledTokens, vocab: int, pairs: int) -> None:
    """Sampled positions: the distinct ids and counts exactly, and the largest difference of their weights."""
    out.sampled = True
    same = ((cached.ids == drawn.ids) & (cached.counts == drawn.counts)).all(dim=1)
    weights = [
        torch.zeros(len(s.ids), vocab).scatter_add_(1, s.ids.clamp(0, vocab - 1), s.weights) for s in (cached, drawn)
    ]
    out.max_abs_error = max(out.max_abs_error, float((weights[0] - weights[1]).abs().max()))
    out.exact += int(same.view(pairs, -1).all(dim=1).sum())
    out.ids_same += int(same.sum())
    out.ids_total += len(same)
