"""A counter-based random stream per (seed, sample, view): the same key gives the same numbers anywhere.

Every view's parameters come from Philox4x64-10 (Salmon et al., "Parallel random numbers: as easy as 1, 2, 3",
SC 2011) with the view seed as the 128-bit key and ``(0, 0, view, sample)`` as the 256-bit counter. The stream of a
(sample, view) pair therefore depends on nothing else: not on the process, the DataLoader worker, the batch it is in,
the order samples are visited or how many were drawn before. Streams of different pairs never overlap (a view draws
a handful of numbers; the low counter words would need 2^128 draws to reach the next pair's block).

Only the raw 64-bit words are used (``Philox.random_raw``), which NumPy keeps bit-stable across versions and
platforms; the conversion to uniforms is done here, so no ``Generator`` distribution method (whose algorithms NumPy
may change between releases) sits between the key and the parameters.
"""

from __future__ import annotations

import numpy as np

from kdcache.errors import ConfigError

RNG_NAME = "philox4x64-10; key=seed; counter=(0, 0, view, sample); u=(raw>>11)*2^-53"
_MAX_WORD = 1 << 64
_MAX_KEY = 1 << 128


def check_seed(seed: int) -> int:
    """A view seed is a Philox key: an integer in ``[0, 2**128)``."""
    if not 0 <= int(seed) < _MAX_KEY:
        raise ConfigError(f"view seed must be an integer in [0, 2**128) (it is the Philox key), got {seed}")
    return int(seed)


class KeyedRandom:
    """Uniform draws for one (sample, view) of one seed.

    >>> a, b = KeyedRandom(0, sample=7, view=3), KeyedRandom(0, sample=7, view=3)
    >>> a.uniform() == b.uniform() and a.integer(0, 9) == b.integer(0, 9)
    True
    """

    def __init__(self, seed: int, *, sample: int, view: int, stream: int = 0) -> None:
        if not (0 <= sample < _MAX_WORD and 0 <= view < _MAX_WORD and 0 <= stream < _MAX_WORD):
            raise ConfigError(
                f"sample, view and stream indices must be in [0, 2**64), got sample {sample}, view {view}, "
                f"stream {stream}"
            )
        # ``stream`` (counter word 1) keeps other users of a (seed, sample, view) key, such as the sampled token
        # targets, off the views' numbers; views use stream 0, as they always have.
        counter = np.array([0, stream, view, sample], dtype=np.uint64)
        self._bits = np.random.Philox(key=check_seed(seed), counter=counter)

    def uniform(self, low: float = 0.0, high: float = 1.0) -> float:
        """A float64 in ``[low, high)`` from the next 53 random bits."""
        raw = int(self._bits.random_raw())
        return low + (high - low) * ((raw >> 11) * 2.0**-53)

    def uniforms(self, count: int) -> np.ndarray:
        """The next ``count`` draws in ``[0, 1)`` as float64, exactly as ``count`` calls of :meth:`uniform` give."""
        raw = self._bits.random_raw(count)
        return (raw >> np.uint64(11)).astype(np.float64) * 2.0**-53

    def integer(self, low: int, high: int) -> int:
        """An integer in ``[low, high]`` (both ends included)."""
        return low + min(int(self.uniform() * (high - low + 1)), high - low)


_M32 = np.uint64(0xFFFFFFFF)
_MULTIPLIERS = (np.uint64(0xD2E7470EE14C6C93), np.uint64(0xCA5A826395121157))
_WEYL = (np.uint64(0x9E3779B97F4A7C15), np.uint64(0xBB67AE8584CAA73B))
_ROUNDS = 10


def mul_wide(a: np.uint64, b: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The low and high 64-bit words of ``a * b`` (128-bit product), from 32-bit halves (numpy has no uint128)."""
    a_lo, a_hi = a & _M32, a >> np.uint64(32)
    b_lo, b_hi = b & _M32, b >> np.uint64(32)
    low_low, low_high, high_low = a_lo * b_lo, a_lo * b_hi, a_hi * b_lo
    mid = (low_low >> np.uint64(32)) + (low_high & _M32) + (high_low & _M32)
    high = a_hi * b_hi + (low_high >> np.uint64(32)) + (high_low >> np.uint64(32)) + (mid >> np.uint64(32))
    return a * b, high


def _philox_block(counter: list[np.ndarray], key: tuple[int, int]) -> list[np.ndarray]:
    """Philox4x64-10 of one counter per row (four ``(B,)`` uint64 words) under ``key``: numpy's ``Philox`` rounds."""
    k0, k1 = np.uint64(key[0]), np.uint64(key[1])
    c0, c1, c2, c3 = counter
    with np.errstate(over="ignore"):
        for r in range(_ROUNDS):
            if r:
                k0, k1 = k0 + _WEYL[0], k1 + _WEYL[1]
            lo0, hi0 = mul_wide(_MULTIPLIERS[0], c0)
            lo1, hi1 = mul_wide(_MULTIPLIERS[1], c2)
            c0, c1, c2, c3 = hi1 ^ c1 ^ k0, lo1, hi0 ^ c3 ^ k1, lo0
    return [c0, c1, c2, c3]


def keyed_words(seed: int, samples: np.ndarray, views: np.ndarray, count: int, *, stream: int = 0) -> np.ndarray:
    """``(B, count)`` uint64: the first ``count`` raw words of the stream of every (sample, view) pair, exactly what
    ``KeyedRandom(seed, sample=i, view=v, stream=stream)`` draws one by one, computed for the whole batch at once.

    numpy's ``Philox`` increments its 256-bit counter before each block of four words, so block ``b`` of a stream
    is Philox4x64-10 of ``(1 + b, stream, view, sample)`` (view and sample below 2**64: no carry reaches them)."""
    samples = np.asarray(samples, dtype=np.uint64)
    views = np.asarray(views, dtype=np.uint64)
    key = check_seed(seed)
    halves = (key & (_MAX_WORD - 1), key >> 64)
    stream_word = np.full(len(samples), stream, dtype=np.uint64)
    blocks = [
        np.stack(_philox_block([np.full(len(samples), 1 + b, dtype=np.uint64), stream_word, views, samples], halves))
        for b in range(-(-count // 4))
    ]
    if not blocks:
        return np.empty((len(samples), 0), dtype=np.uint64)
    return np.concatenate(blocks).T[:, :count].copy()


def uniforms_of(words: np.ndarray) -> np.ndarray:
    """Raw words as float64 draws in ``[0, 1)``, the conversion :meth:`KeyedRandom.uniform` applies to each."""
    return (words >> np.uint64(11)).astype(np.float64) * 2.0**-53
