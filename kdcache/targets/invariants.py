"""Facts every correctly stored logits target satisfies, checked on the stored rows before they are decoded.

A target's parameters say how its arrays decode; where a cheap invariant ties the parameters to the values, a
record that lies about them (a manifest rewritten and resealed) is caught on the rows read:

* top-k with log-sum-exp at temperatures T: the stored classes' mass m_T = Σ_k exp(v_k / T − lse_T) lies in
  [k / C, 1] (the k largest of C probabilities hold at least k / C of the mass), and T · lse_T grows with T by at
  most log C per unit of T (its derivative in T is the entropy of softmax(z / T)). Temperatures reordered or
  changed break one of these for every confident teacher;
* packed token top-k (:mod:`kdcache.targets.packing`): the same mass bounds widened by half a code step, no bits
  set after the last field, every id below the vocabulary;
* int8: every row's scale is positive and finite, its offset finite.

Tolerances cover the rounding of the stored values (float16: 2⁻¹¹, bfloat16: 2⁻⁸ relative) and of the float32
log-sum-exp, nothing more: a mass of 1.001 is not rounding.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence

import numpy as np

RELATIVE_ROUNDING = {"float16": 2.0**-11, "bfloat16": 2.0**-8, "float32": 2.0**-24, "float64": 0.0}
LSE_ROUNDING = 2.0**-22  # relative error of a float32 log-sum-exp, with margin
SLACK = 1e-4  # float64 arithmetic of the check itself, with margin


def stored_floats(array: np.ndarray, dtype: str) -> np.ndarray:
    """Stored values (bfloat16 as its raw uint16 bits) as float64."""
    if dtype == "bfloat16":
        return (array.astype(np.uint32) << 16).view(np.float32).astype(np.float64)
    return array.astype(np.float64)


def topk_problem(
    values: np.ndarray, lse: np.ndarray, temperatures: Sequence[float], classes: int, dtype: str, absolute: float = 0.0
) -> str:
    """How stored top-k rows (``values`` ``(..., k)``, ``lse`` ``(..., len(temperatures))``) break the invariants of
    the declared temperatures, or ``""``. ``absolute``: the largest error of a decoded value (half a quantiser
    step for packed codes), on top of the dtype's relative rounding."""
    v = stored_floats(values, dtype).reshape(-1, values.shape[-1])
    lse = lse.astype(np.float64).reshape(len(v), len(temperatures))
    if len(v) == 0:
        return ""
    k = v.shape[1]
    peak = np.abs(v).max(axis=1)
    for i, t in enumerate(temperatures):
        log_mass = _logsumexp(v / t - lse[:, i : i + 1])
        tol = SLACK + np.abs(lse[:, i]) * LSE_ROUNDING + absolute / t
        low = np.log(k / classes) - tol - 2 * peak * RELATIVE_ROUNDING[dtype] / t
        bad = (log_mass > tol) | (log_mass < low) | ~np.isfinite(log_mass)
        if bad.any():
            row = int(np.argmax(bad))
            return (
                f"at T={t} the stored top-{k} classes of row {row} hold {np.exp(log_mass[row]):.6g} of the "
                f"probability, outside [{k / classes:.4g}, 1] ({int(bad.sum())} of {len(v)} rows read)"
            )
    order = np.argsort(temperatures)
    for a, b in itertools.pairwise(order):
        ta, tb = temperatures[a], temperatures[b]
        grows = tb * lse[:, b] - ta * lse[:, a]
        tol = SLACK * tb + (ta * np.abs(lse[:, a]) + tb * np.abs(lse[:, b])) * LSE_ROUNDING
        bad = (grows < -tol) | (grows > (tb - ta) * np.log(classes) + tol)
        if bad.any():
            row = int(np.argmax(bad))
            return (
                f"T·lse_T goes from {ta * lse[row, a]:.6g} at T={ta} to {tb * lse[row, b]:.6g} at T={tb} in row "
                f"{row}, not a rise of 0..{(tb - ta) * np.log(classes):.4g} (log C per unit of T)"
            )
    return ""


def int8_problem(scale: np.ndarray, offset: np.ndarray) -> str:
    """How stored int8 rows' scales and offsets are impossible (a scale ≤ 0 or not finite), or ``""``."""
    bad = ~(np.isfinite(scale) & (scale > 0)) | ~np.isfinite(offset)
    if not bad.any():
        return ""
    row = int(np.argmax(bad.reshape(-1)))
    return (
        f"row {row} has scale {scale.reshape(-1)[row]!r} and offset {offset.reshape(-1)[row]!r}; every scale must be "
        f"positive and finite, every offset finite ({int(bad.sum())} of {bad.size} rows read)"
    )


def _logsumexp(x: np.ndarray) -> np.ndarray:
    top = x.max(axis=1, keepdims=True)
    top = np.where(np.isfinite(top), top, 0.0)
    with np.errstate(over="ignore", invalid="ignore"):
        return (top + np.log(np.exp(x - top).sum(axis=1, keepdims=True)))[:, 0]
