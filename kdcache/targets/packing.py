"""Sub-16-bit encodings of top-k token targets: log-probabilities as b-bit codes and token ids as b-bit fields,
both packed little-endian into a ``uint8`` byte array per position (``ceil(k · b / 8)`` bytes).

* values: code c_i = round(−log p_i / step), clipped to [0, 2^b − 1]; decoded log p_i = −c_i · step. The step is
  a power of two, so the division is exact in float64 and the code is rounded once: the stored bytes do not depend
  on the CPU's float kernels. Absolute codes need no per-row maximum; a log-prob below −(2^b − 1) · step (a
  probability under e^−15.9 for 7 bits at step 1/8) is clipped to the last code;
* ids: each id in ``bits`` bits (17 holds a 128,256-token vocabulary).

Field j of a position occupies bits j·b … j·b + b − 1 of its bytes, bit 0 of byte 0 first (numpy's
``bitorder="little"``), so a plain reader decodes with ``np.unpackbits(a, axis=-1, bitorder="little")``.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import numpy as np

from kdcache.errors import ConfigError
from kdcache.registry import LazyModule

if TYPE_CHECKING:
    import torch
else:
    torch = LazyModule("torch")


def packed_width(count: int, bits: int) -> int:
    """Bytes per position holding ``count`` fields of ``bits`` bits."""
    return (count * bits + 7) // 8


def pack_fields(codes: np.ndarray, bits: int) -> np.ndarray:
    """Unsigned ``codes`` ``(..., n)`` (each < 2^bits) as ``(..., packed_width(n, bits))`` uint8, little-endian."""
    codes = np.asarray(codes, dtype=np.uint64)
    if codes.size and int(codes.max()) >> bits:
        raise ConfigError(f"a code of {int(codes.max())} does not fit {bits} bits; widen the field")
    bit_planes = ((codes[..., None] >> np.arange(bits, dtype=np.uint64)) & 1).astype(np.uint8)
    flat = bit_planes.reshape(*codes.shape[:-1], codes.shape[-1] * bits)
    return np.packbits(flat, axis=-1, bitorder="little")


def unpack_fields(packed: torch.Tensor, count: int, bits: int) -> torch.Tensor:
    """The ``count`` fields of ``bits`` bits of ``packed`` ``(..., bytes)`` uint8 as int64 ``(..., count)``, on
    ``packed``'s device (the inverse of :func:`pack_fields`)."""
    shifts = torch.arange(8, device=packed.device, dtype=torch.int64)
    planes = (packed.long()[..., None] >> shifts) & 1
    planes = planes.flatten(-2)[..., : count * bits].unflatten(-1, (count, bits))
    weights = torch.ones(bits, dtype=torch.int64, device=packed.device) << torch.arange(bits, device=packed.device)
    return (planes * weights).sum(-1)


def padding_is_zero(packed: np.ndarray, count: int, bits: int) -> bool:
    """Whether the bits after the last field of every position are zero (a correct writer leaves them so)."""
    spare = packed.shape[-1] * 8 - count * bits
    return spare == 0 or not (packed[..., -1] >> (8 - spare)).any()


def check_step(step: float) -> None:
    """Refuse a quantiser step that is not a positive power of two (the division would round twice)."""
    if not (step > 0 and math.frexp(step)[0] == 0.5):
        raise ValueError(f"value_step must be a power of two (1/8, 1/16, ...) so codes round once, got {step}")


def quantise(log_p: torch.Tensor, bits: int, step: float) -> np.ndarray:
    """Float64 log-probs ``(..., k)`` as codes round(−log p / step) clipped to [0, 2^bits − 1] (int64)."""
    codes = torch.round(-log_p.double() / step).clamp(0, (1 << bits) - 1)
    return codes.long().cpu().numpy()


def index_dtype(vocab_size: int) -> str:
    """The narrowest unsigned integer that holds every token id of a vocabulary."""
    for dtype in ("uint8", "uint16", "uint32"):
        if vocab_size - 1 <= np.iinfo(dtype).max:
            return dtype
    raise ConfigError(f"a vocabulary of {vocab_size} tokens does not fit uint32 token ids")
