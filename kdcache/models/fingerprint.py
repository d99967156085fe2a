"""The teacher fingerprint a store records: what made the cached outputs, down to the bytes of every weight."""

from __future__ import annotations

from typing import Any

from torch import nn

from kdcache.checkpoint import state_digest
from kdcache.fingerprint import with_digest


def teacher_fingerprint(model: nn.Module, *, spec: dict[str, Any], layers: list[str]) -> dict[str, Any]:
    """Architecture spec, a hash of every state-dict tensor (name, dtype, shape, bytes), captured layers, mode."""
    dtypes = sorted({str(p.dtype) for p in model.parameters()})
    state = state_digest(model.state_dict())
    return with_digest({"spec": spec, "state_sha256": state, "layers": sorted(layers), "dtypes": dtypes, "eval": True})
