"""Names that end up as paths in a store (teachers, targets, layers) and the codec names arrays are stored with.

Both are shared by the domain (a target names its arrays and picks their compressor) and the store (which creates
the arrays), so they live below both.
"""

from __future__ import annotations

import re
from typing import Literal, TypeGuard, get_args

from kdcache.errors import UnsafeNameError
from kdcache.registry import moved_names

Compressor = Literal["none", "lz4", "zstd"]
"""Inner-chunk compressor of an array: none (logits barely compress), blosc-lz4, or blosc-zstd (features)."""

COMPRESSORS: tuple[Compressor, ...] = get_args(Compressor)


def is_compressor(name: str) -> TypeGuard[Compressor]:
    """Whether ``name`` is a compressor kdcache writes (a manifest names one as a plain string)."""
    return name in COMPRESSORS


_SEGMENT = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.\-]*$")


def check_safe_name(name: str, *, what: str, levels: bool = True) -> str:
    """Refuse names that could leave the store root: empty, absolute, ``..``, backslashes or odd characters.

    ``/`` separates levels (``fsp/layer1__layer2``); every level must be a plain name such as ``layer3.1.relu``.
    With ``levels=False`` (a teacher: one group of the store) the name is one level: ``cnn64/logits`` would nest
    inside another teacher's arrays.
    """
    if not levels and "/" in name:
        raise UnsafeNameError(
            f"{what} name {name!r} is not allowed: it is one level of the store, so it may not contain '/' (it would "
            "nest inside another name's arrays); use letters, digits, '_', '.', '-', e.g. "
            f"{name.replace('/', '-')!r}"
        )
    segments = name.split("/")
    if not name or name.startswith("/") or any(s in ("", ".", "..") or not _SEGMENT.match(s) for s in segments):
        raise UnsafeNameError(
            f"{what} name {name!r} is not allowed: use letters, digits, '_', '.', '-' (and '/' between levels), "
            "with no empty, '.' or '..' level and no leading '/'"
        )
    return name


__getattr__ = moved_names(__name__, {"check_name": "kdcache.names:check_safe_name"})
