"""The fault-injection ledger: every injected fault records what happened, and the session prints the totals."""

from __future__ import annotations

from dataclasses import dataclass

from kdcache.errors import KdcacheError


@dataclass
class Outcome:
    """What one injected fault led to.

    ``detected``: kdcache raised one of its typed errors, naming what is wrong and the fix. ``recovered``: the
    operation ended with the correct result (after a resume or a retry, or because the fault was harmless).
    ``silent_wrong``: values differed from the fault-free run and nothing said so. ``bytes_lost``: bytes that were
    committed before the fault (and not themselves the fault's target) changed or vanished.
    """

    fault_class: str
    name: str
    detected: bool = False
    recovered: bool = False
    silent_wrong: bool = False
    bytes_lost: bool = False
    note: str = ""

    @property
    def passed(self) -> bool:
        return (self.detected or self.recovered) and not self.silent_wrong and not self.bytes_lost


OUTCOMES: list[Outcome] = []


def record(outcome: Outcome) -> Outcome:
    """Add an outcome to the session's ledger and return it (tests then assert ``outcome.passed``)."""
    OUTCOMES.append(outcome)
    return outcome


def clear_error(exc: BaseException | None, *must_mention: str) -> bool:
    """A kdcache error whose message mentions every one of ``must_mention`` (store, array, shard, ...)."""
    return isinstance(exc, KdcacheError) and all(text in str(exc) for text in must_mention)


def summary_lines() -> list[str]:
    """The per-class table and the closing ``faults: N passed, M failed`` line."""
    classes: dict[str, list[Outcome]] = {}
    for outcome in OUTCOMES:
        classes.setdefault(outcome.fault_class, []).append(outcome)
    header = f"{'class':<14}{'injected':>10}{'detected':>10}{'recovered':>11}{'silent wrong':>14}{'bytes lost':>12}"
    lines = ["fault injection: outcomes per class", header]
    for name, items in sorted(classes.items()):
        lines.append(
            f"{name:<14}{len(items):>10}{sum(o.detected for o in items):>10}{sum(o.recovered for o in items):>11}"
            f"{sum(o.silent_wrong for o in items):>14}{sum(o.bytes_lost for o in items):>12}"
        )
    passed = sum(o.passed for o in OUTCOMES)
    for outcome in OUTCOMES:
        if not outcome.passed:
            lines.append(f"FAILED {outcome.fault_class}/{outcome.name}: {outcome}")
    lines.append(f"faults: {passed} passed, {len(OUTCOMES) - passed} failed")
    return lines
