"""The target a store's record decodes with, checked against the arrays that record lists.

A target's parameters decide how its arrays are read back (float16 or bfloat16 bits, top-k or int8, ...). They are
checked against the arrays themselves before anything is decoded: parameters that describe other arrays than the
store holds (another dtype, another k, another encoding) would silently turn every value into another number.
"""

from __future__ import annotations

from kdcache.errors import KdcacheError, StoreFormatError
from kdcache.store.manifest import TargetRecord
from kdcache.targets import Target, build_target


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
