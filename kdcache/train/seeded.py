"""``np.random.default_rng([seed, epoch, i]).integers(count)`` for a whole batch of samples ``i`` at once.

The ``random`` view policy keys each sample's view by (seed, epoch, sample) through numpy's ``SeedSequence`` and
``PCG64``: one generator per sample, ~9 µs each, 2.4 ms for a batch of 256 (several times the rest of an in-RAM
batch). The same numbers are computed here for the batch with numpy arrays, step by step as numpy does them:

* ``SeedSequence``'s entropy mixing (pool of four uint32 words, its hash constants) and ``generate_state(4, uint64)``;
* ``PCG64`` seeded from those words (``pcg_setseq_128_srandom_r``), one 128-bit LCG step and its XSL-RR output;
* ``integers(count)``'s Lemire bound on the low 32 bits of that output.

A row Lemire would reject (probability below ``count / 2**32``), or an entropy word numpy splits differently (a
sample or epoch of 2**32 or more), is drawn by numpy itself, so the result is always numpy's.
"""

from __future__ import annotations

import numpy as np

from kdcache.views.rng import mul_wide

_M32 = np.uint64(0xFFFFFFFF)
_INIT_A, _MULT_A, _INIT_B, _MULT_B = 0x43B0D7E5, 0x931E8875, 0x8B51F9DD, 0x58F38DED
_MIX_L, _MIX_R = np.uint32(0xCA01F9DD), np.uint32(0x4973F715)
_PCG_MULT = (np.uint64(2549297995355413924), np.uint64(4865540595714422341))  # high, low 64 bits
POOL = 4


def keyed_integers(seed: int, epoch: int, samples: np.ndarray, count: int) -> np.ndarray:
    """``int64`` array: ``np.random.default_rng([seed, epoch, i]).integers(count)`` for every ``i`` of ``samples``."""
    samples = np.asarray(samples, dtype=np.int64)
    out = np.zeros(len(samples), dtype=np.int64)
    if count <= 1 or len(samples) == 0:
        return out
    fallback = (samples >= 2**32) | (samples < 0) | (epoch >= 2**32)
    head = [*_words(seed), *_words(epoch)]
    rows = np.flatnonzero(~fallback)
    words = [np.full(len(rows), w, dtype=np.uint32) for w in head] + [samples[rows].astype(np.uint32)]
    low32 = _first_output(_generate_state(_mix_entropy(words))) & _M32
    scaled = low32 * np.uint64(count)
    out[rows] = (scaled >> np.uint64(32)).astype(np.int64)
    threshold = (2**32 - count) % count
    fallback[rows[(scaled & _M32) < np.uint64(threshold)]] = True  # Lemire would draw again: let numpy
    for row in np.flatnonzero(fallback).tolist():
        out[row] = np.random.default_rng([seed, epoch, int(samples[row])]).integers(count)
    return out


def _words(value: int) -> list[int]:
    """An entropy integer as ``SeedSequence`` splits it: little-endian uint32 words, ``[0]`` for zero."""
    found = []
    while True:
        found.append(value & 0xFFFFFFFF)
        value >>= 32
        if value == 0:
            return found


class _Hash:
    """``SeedSequence``'s ``hashmix``: the constant advances the same way whatever the values, so one scalar
    serves a whole column of rows."""

    def __init__(self, start: int, mult: int) -> None:
        self.const, self.mult = start, mult

    def __call__(self, value: np.ndarray) -> np.ndarray:
        value = value ^ np.uint32(self.const)
        self.const = (self.const * self.mult) & 0xFFFFFFFF
        value = value * np.uint32(self.const)
        return value ^ (value >> np.uint32(16))


def _mix(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    result: np.ndarray = _MIX_L * x - _MIX_R * y
    return result ^ (result >> np.uint32(16))


def _mix_entropy(entropy: list[np.ndarray]) -> list[np.ndarray]:
    """The pool of four uint32 columns ``SeedSequence`` mixes ``entropy`` (columns of uint32 words) into."""
    hashmix = _Hash(_INIT_A, _MULT_A)
    with np.errstate(over="ignore"):
        zero = np.zeros_like(entropy[0])
        pool = [hashmix(entropy[i] if i < len(entropy) else zero) for i in range(POOL)]
        for src in range(POOL):
            for dst in range(POOL):
                if src != dst:
                    pool[dst] = _mix(pool[dst], hashmix(pool[src]))
        for src in range(POOL, len(entropy)):
            for dst in range(POOL):
                pool[dst] = _mix(pool[dst], hashmix(entropy[src]))
    return pool


def _generate_state(pool: list[np.ndarray]) -> list[np.ndarray]:
    """``generate_state(4, np.uint64)``: four uint64 columns, each from two uint32 words (little-endian)."""
    hashmix = _Hash(_INIT_B, _MULT_B)
    with np.errstate(over="ignore"):
        halves = []
        for k in range(2 * POOL):
            value = pool[k % POOL] ^ np.uint32(hashmix.const)
            hashmix.const = (hashmix.const * hashmix.mult) & 0xFFFFFFFF
            value = value * np.uint32(hashmix.const)
            halves.append((value ^ (value >> np.uint32(16))).astype(np.uint64))
    return [halves[2 * k] | (halves[2 * k + 1] << np.uint64(32)) for k in range(POOL)]


def _first_output(state: list[np.ndarray]) -> np.ndarray:
    """The first 64-bit output of ``PCG64`` seeded with ``state`` (seed = words 0, 1; stream = words 2, 3)."""
    seed = (state[0], state[1])
    inc = ((state[2] << np.uint64(1)) | (state[3] >> np.uint64(63)), (state[3] << np.uint64(1)) | np.uint64(1))
    with np.errstate(over="ignore"):
        value = _step((np.zeros_like(inc[0]), np.zeros_like(inc[1])), inc)
        value = _step(_add(value, seed), inc)
        high, low = _step(value, inc)
        rotation = high >> np.uint64(58)
        mixed = high ^ low
        return (mixed >> rotation) | (mixed << ((np.uint64(64) - rotation) & np.uint64(63)))


def _add(a: tuple[np.ndarray, np.ndarray], b: tuple[np.ndarray, np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    low = a[1] + b[1]
    return a[0] + b[0] + (low < a[1]).astype(np.uint64), low


def _step(state: tuple[np.ndarray, np.ndarray], inc: tuple[np.ndarray, np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """One 128-bit LCG step, ``state * multiplier + inc`` modulo 2**128, on (high, low) uint64 columns."""
    high, low = state
    m_high, m_low = _PCG_MULT
    product_low = low * m_low
    product_high = mul_wide(m_low, low)[1] + low * m_high + high * m_low
    return _add((product_high, product_low), inc)
