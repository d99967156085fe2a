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
