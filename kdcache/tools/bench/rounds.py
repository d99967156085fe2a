"""Interleaved measurement: every variant runs once per round, in a rotated order, and ratios are paired per round.

Timings on a shared machine drift (other processes, thermal state, page cache). Running variant A for a while and
then variant B would fold that drift into the A/B ratio. Instead each round runs every variant once, the order
rotated so that no variant always goes first, and a ratio A/B is computed *within* each round before taking the
median over rounds. Nothing here knows what it measures: a variant is a callable that returns the seconds (or any
positive quantity) it measured, so setup work can stay outside the timed part.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from tqdm.auto import tqdm

Variant = Callable[[], float]


@dataclass
class Samples:
    """One value per round for each variant, in round order."""

    values: dict[str, list[float]] = field(default_factory=dict)

    def add(self, name: str, value: float) -> None:
        self.values.setdefault(name, []).append(float(value))

    def summary(self, name: str) -> dict[str, Any]:
        """Median, minimum, maximum and every value of one variant."""
        return spread(self.values[name])

    def ratio(self, numerator: str, denominator: str) -> dict[str, Any]:
        """``numerator / denominator`` paired within each round: median, minimum, maximum and every round's ratio."""
        pairs = zip(self.values[numerator], self.values[denominator], strict=True)
        return spread([a / b for a, b in pairs])


def spread(values: list[float]) -> dict[str, Any]:
    """The median with the smallest and largest value: what a reader needs to judge a noisy figure."""
    return {
        "median": statistics.median(values),
        "min": min(values),
        "max": max(values),
        "rounds": [round(v, 6) for v in values],
    }


def interleave(
    variants: dict[str, Variant], *, rounds: int, warmup: int = 1, desc: str = "", progress: bool = True
) -> Samples:
    """Run each variant once per round for ``warmup`` unrecorded rounds, then ``rounds`` recorded ones.

    Round ``r`` starts at variant ``r mod len(variants)`` and goes on in the listed order.
    """
    names = list(variants)
    samples = Samples()
    bar = tqdm(total=(warmup + rounds) * len(names), desc=desc, unit="run", disable=not progress, leave=False)
    for r in range(warmup + rounds):
        for i in range(len(names)):
            name = names[(r + i) % len(names)]
            value = variants[name]()
            if r >= warmup:
                samples.add(name, value)
            bar.update()
    bar.close()
    return samples


def timed(fn: Callable[[], object]) -> float:
    """Seconds one call of ``fn`` takes."""
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start
