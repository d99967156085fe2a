"""The target a store's record decodes with, checked against the arrays that record lists.

A target's parameters decide how its arrays are read back (float16 or bfloat16 bits, top-k or int8, ...). They are
checked against the arrays themselves before anything is decoded: parameters that describe other arrays than the
store holds (another dtype, another k, another encoding) would silently turn every value into another number. The
rows read are checked against the invariants the parameters imply (:meth:`Target.stored_problem`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from kdcache.errors import KdcacheError, StoreFormatError
from kdcache.store import StoreReader
from kdcache.store.manifest import TargetRecord
from kdcache.targets import EnsembleDecoder, Target, build_target


def checked_target(url: str, teacher: str, name: str, record: TargetRecord) -> Target:
    """The :class:`Target` of ``record``, refused unless its parameters lay out exactly the recorded arrays."""
    where = f"store {url!r}, teacher {teacher!r}, target {name!r}"
    try:
        target = build_target(record.kind, record.params)
    except (KdcacheError, ValueError) as exc:
        raise StoreFormatError(f"{where}: its recorded kind and parameters are not valid ({exc})") from None
    if record.value_shape is None:
        raise StoreFormatError(f"{where}: the record has no value_shape; upgrade the store with `kdcache upgrade`")
    expected = {
        rel: (list(a.sample_shape), a.dtype, a.compressor)
        for rel, a in target.layout(tuple(record.value_shape)).items()
    }
    found = {rel: (a.shape[2:], a.dtype, a.compressor) for rel, a in record.arrays.items()}
    if target.name != name or expected != found:
        raise StoreFormatError(
            f"{where}: its parameters {record.params} describe arrays (sample shape, dtype, codec) {expected}, but "
            f"the store holds {found}. Decoding with them would change every value: the manifest was edited or "
            "written by another program. Restore it or rebuild the store"
        )
    return target


@dataclass(frozen=True)
class ValueCheck:
    """One target of one teacher whose stored rows are checked against its parameters' invariants when read."""

    name: str
    teacher: str
    target: Target
    value_shape: tuple[int, ...]
    prefix: str = ""  # an ensemble's arrays are keyed ``<member>/<array>``


def value_checks(cache: StoreReader, decoders: dict[str, Target | EnsembleDecoder], teacher: str) -> list[ValueCheck]:
    """A :class:`ValueCheck` for every target of ``decoders`` (every member of an ensemble's)."""
    checks = []
    for name, decoder in decoders.items():
        members = decoder.members if isinstance(decoder, EnsembleDecoder) else {teacher: decoder}
        for member, target in members.items():
            shape = tuple(cache.teacher(member).targets[name].value_shape or ())
            prefix = f"{member}/" if isinstance(decoder, EnsembleDecoder) else ""
            checks.append(ValueCheck(name, member, target, shape, prefix))
    return checks


def check_values(url: str, checks: list[ValueCheck], stored: dict[str, dict[str, np.ndarray]], indices: Any) -> None:
    """Refuse stored rows that no correct store holds (a top-k mass above 1, an int8 scale ≤ 0), naming the store,
    teacher, target and samples: the record's parameters do not describe these values."""
    for check in checks:
        own = {k.removeprefix(check.prefix): v for k, v in stored[check.name].items() if k.startswith(check.prefix)}
        problem = check.target.stored_problem(own, check.value_shape)
        if problem:
            raise StoreFormatError(
                f"store {url!r}, teacher {check.teacher!r}, target {check.name!r} (samples "
                f"{np.asarray(indices)[:8].tolist()}…): {problem}. Its recorded parameters {check.target.describe()} "
                "do not describe the stored values: the manifest was rewritten after the store was written. Restore "
                "it or rebuild the store with `kdcache precompute`"
            )
