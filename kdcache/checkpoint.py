"""Model checkpoints without pickle: safetensors files (``torch.load(weights_only=True)`` for ``.pt`` files), and
the digest of a state dict that fingerprints a teacher without building it."""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, safe_open, save_file
from torch import nn

from kdcache.errors import CheckpointError


def save_model(model: nn.Module, path: str | Path, *, spec: dict[str, Any]) -> Path:
    """Write the model's state dict and its architecture ``spec`` (JSON metadata) atomically to ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tensors = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    tmp = path.with_name(f".{path.name}.{os.getpid()}.partial")
    save_file(tensors, tmp, metadata={"kdcache.spec": json.dumps(spec, sort_keys=True)})
    os.replace(tmp, path)
    return path


def read_spec(path: str | Path) -> dict[str, Any]:
    """The architecture spec stored with a safetensors checkpoint (empty for files kdcache did not write)."""
    with safe_open(str(path), framework="pt") as f:
        meta = f.metadata() or {}
    return json.loads(meta.get("kdcache.spec", "{}"))


def load_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """Tensors of a checkpoint; ``.safetensors`` natively, anything else only through ``weights_only=True``."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {str(path)!r} does not exist; train the model first or fix the path")
    if path.suffix == ".safetensors":
        return load_file(path)
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # an unpickling refusal means the file holds code, not just tensors
        raise CheckpointError(
            f"refused to load {str(path)!r}: it is not a plain tensor checkpoint ({type(exc).__name__}: {exc}). "
            "Convert it to safetensors with a trusted tool; kdcache never unpickles arbitrary objects"
        ) from None
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise CheckpointError(f"{str(path)!r} does not hold a flat state dict of tensors")
    return state


def load_model(model: nn.Module, path: str | Path) -> nn.Module:
    """Load a checkpoint into ``model``; missing or unexpected keys and shape mismatches are errors."""
    state = load_state_dict(path)
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        raise CheckpointError(f"checkpoint {str(path)!r} does not fit {type(model).__name__}: {exc}") from None
    return model


def state_digest(state: Mapping[str, torch.Tensor]) -> str:
    """SHA-256 over every tensor of a state dict: name, dtype, shape and bytes, in name order.

    Computable from a checkpoint file without building the model, so stage two can check which weights made a store.
    """
    h = hashlib.sha256()
    for name, tensor in sorted(state.items()):
        t = tensor.detach().cpu().contiguous()
        h.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()
