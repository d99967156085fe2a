"""``kdcache verify``'s check of stored values against their targets' parameters, over every row of the store.

The store layer checks bytes and records (:func:`kdcache.store.scrub`); it cannot decode targets. Here the arrays
each target's invariants need (:meth:`Target.checked_arrays <kdcache.targets.Target.checked_arrays>`: a top-k
target's values and log-sum-exps, an int8 target's scales and offsets) are read whole, shard by verified shard, and
checked against the invariants its parameters imply
(:meth:`Target.stored_problem <kdcache.targets.Target.stored_problem>`: top-k mass at every declared temperature,
int8 scales): what a manifest rewritten consistently (its seal recomputed) can still be caught by.
"""

from __future__ import annotations

from kdcache.errors import KdcacheError
from kdcache.store import StoreReader, read_manifest, scrub
from kdcache.store.layout import owner_of_teacher
from kdcache.store.location import StoreLocation
from kdcache.targets import build_target


def value_problems(url: str) -> list[str]:
    """One line per target whose stored values no record with its parameters could hold."""
    location = StoreLocation(url)
    cache = StoreReader(location, read_manifest(location))
    problems = []
    for teacher in cache.teachers:
        for name, record in cache.teacher(teacher).targets.items():
            where = f"store {url!r}, teacher {teacher!r}, target {name!r}"
            try:
                target = build_target(record.kind, record.params)
            except (KdcacheError, ValueError) as exc:
                problems.append(f"{where}: its recorded kind and parameters are not valid ({exc})")
                continue
            try:
                arrays = {
                    rel: cache.array_reader(record.arrays[rel], owner_of_teacher(teacher), in_memory=True).read_all()
                    for rel in target.checked_arrays()
                }
            except (KdcacheError, KeyError):  # a damaged shard or a misplaced record: the scrub names it already
                continue
            problem = target.stored_problem(arrays, tuple(record.value_shape or ())) if arrays else ""
            if problem:
                problems.append(
                    f"{where}: {problem}. Its recorded parameters do not describe the stored values: the manifest "
                    "was rewritten after the store was written; restore it or rebuild the store"
                )
    return problems


def verify_problems(url: str) -> list[str]:
    """Every problem ``kdcache verify`` reports: the store's scrub, then the stored values of every target."""
    return scrub(url) + value_problems(url)
