"""The teacher fingerprint a store records: what made the cached outputs, down to the bytes of every weight."""

from __future__ import annotations

from typing import Any

from torch import nn

from kdcache.checkpoint import state_digest
from kdcache.fingerprint import with_digest
from kdcache.models.hfdir import model_source


def teacher_fingerprint(model: nn.Module, *, spec: dict[str, Any], layers: list[str]) -> dict[str, Any]:
    """Architecture spec, a hash of every state-dict tensor (name, dtype, shape, bytes), captured layers, mode, and
    — for a teacher loaded from a ``transformers`` directory — that directory's files and tokenizer (``source``,
    :func:`~kdcache.models.hfdir.directory_source`), which stage two compares with the directory as it is now."""
    dtypes = sorted({str(p.dtype) for p in model.parameters()})
    state = state_digest(model.state_dict())
    facts = {"spec": spec, "state_sha256": state, "layers": sorted(layers), "dtypes": dtypes, "eval": True}
    source = model_source(model)
    return with_digest(facts if source is None else {**facts, "source": source})
