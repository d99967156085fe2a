"""Model checkpoints without pickle: safetensors files (``torch.load(weights_only=True)`` for ``.pt`` files), and
the digest of a state dict that fingerprints a teacher without building it."""

from __future__ import annotations

import errno
import hashlib
import json
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, safe_open, save_file
from torch import nn

from kdcache.atomic import atomic_path
from kdcache.errors import CheckpointError, StoreIOError


def save_model(model: nn.Module, path: str | Path, *, spec: dict[str, Any]) -> Path:
    """Write the model's state dict and its architecture ``spec`` (JSON metadata) atomically to ``path``."""
    path = Path(path)
    tensors = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    return write_safetensors(path, tensors, {"kdcache.spec": json.dumps(spec, sort_keys=True)})


def write_safetensors(path: Path, tensors: dict[str, torch.Tensor], metadata: dict[str, str]) -> Path:
    """Write a safetensors file atomically (:mod:`kdcache.atomic`: a temp file next to ``path``, fsync, then
    ``os.replace``). A failure (a full disk) leaves the previous file intact, removes the temp file and is a
    :class:`StoreIOError` naming the path."""
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        with atomic_path(path) as tmp:
            save_file(tensors, tmp, metadata=metadata)
    except (OSError, SafetensorError) as exc:
        raise StoreIOError(_describe_write_error(path, exc)) from None
    return path


def _describe_write_error(path: Path, exc: BaseException) -> str:
    """What failed while writing ``path``, and that the previous file (if any) is untouched."""
    found = re.search(r"os error (\d+)", str(exc))
    code = getattr(exc, "errno", None) or (int(found.group(1)) if found else None)
    why = (
        "no space is left on the device (or quota)"
        if code in (errno.ENOSPC, errno.EDQUOT)
        else f"{type(exc).__name__}: {exc}"
    )
    kept = "the previous file there is intact" if path.exists() else "nothing was written there"
    return (
        f"writing {str(path)!r} failed: {why}; {kept}. Free space (or fix the directory's permissions), then re-run; "
        "training checkpoints resume with --resume from the previous one"
    )


def read_spec(path: str | Path) -> dict[str, Any]:
    """The architecture spec stored with a safetensors checkpoint kdcache wrote (empty for any other file)."""
    if Path(path).suffix != ".safetensors":
        return {}
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
    except (OSError, ValueError, SafetensorError) as exc:
        raise CheckpointError(f"{str(path)!r} is not a readable safetensors file ({exc})") from None
    return json.loads(meta.get("kdcache.spec", "{}"))


WRAPPERS = ("state_dict", "model", "model_state_dict", "module", "net")  # keys trainers nest a state dict under


def load_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """The tensors of a checkpoint: ``.safetensors`` natively; ``.pt``/``.pth`` (any other suffix) only through
    ``torch.load(weights_only=True)``, so no pickled code ever runs. A state dict nested under one of
    :data:`WRAPPERS` (``{"state_dict": ...}``, ``{"model": ...}``) is unwrapped, and DDP's ``module.`` prefix removed."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {str(path)!r} does not exist; train the model first or fix the path")
    if path.suffix == ".safetensors":
        try:
            return load_file(path)
        except (OSError, ValueError, SafetensorError) as exc:
            raise CheckpointError(f"{str(path)!r} is not a readable safetensors file ({exc})") from None
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001  (an unpickling refusal means the file holds code, not just tensors)
        raise CheckpointError(
            f"refused to load {str(path)!r}: it is not a plain tensor checkpoint ({type(exc).__name__}: {exc}). "
            "Convert it to safetensors with a trusted tool; kdcache never unpickles arbitrary objects"
        ) from None
    return _plain_state(path, state)


def _plain_state(path: Path, state: Any) -> dict[str, torch.Tensor]:
    """A flat name -> tensor dict from what ``torch.load`` returned (a trainer's wrapper dict unwrapped)."""
    if isinstance(state, dict):
        nested = [k for k in WRAPPERS if isinstance(state.get(k), dict)]
        if nested and not all(isinstance(v, torch.Tensor) for v in state.values()):
            state = state[nested[0]]
    if not isinstance(state, dict) or not state or not all(isinstance(v, torch.Tensor) for v in state.values()):
        found = type(state).__name__ if not isinstance(state, dict) else f"a dict with keys {list(state)[:8]}"
        raise CheckpointError(
            f"{str(path)!r} holds {found}, not a state dict of tensors (nor one under {', '.join(WRAPPERS)}). Save "
            "model.state_dict() (torch.save or safetensors)"
        )
    if all(k.startswith("module.") for k in state):  # saved from a DistributedDataParallel wrapper
        state = {k.removeprefix("module."): v for k, v in state.items()}
    return state


def load_model(model: nn.Module, path: str | Path) -> nn.Module:
    """Load a checkpoint into ``model``; missing or unexpected keys and shape mismatches are errors that list them."""
    state = load_state_dict(path)
    expected = model.state_dict()
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    shapes = [
        f"{k} {tuple(state[k].shape)} vs {tuple(v.shape)}"
        for k, v in expected.items()
        if k in state and state[k].shape != v.shape
    ]
    if missing or unexpected or shapes:
        parts = [
            f"{label} ({len(keys)}): {', '.join(keys[:10])}{' …' if len(keys) > 10 else ''}"
            for label, keys in (
                ("missing keys", missing),
                ("unexpected keys", unexpected),
                ("shapes (checkpoint vs model)", shapes),
            )
            if keys
        ]
        raise CheckpointError(
            f"checkpoint {str(path)!r} does not fit {type(model).__name__}: {'; '.join(parts)}. Build the model with "
            "the arguments the checkpoint was trained with, or point at its own checkpoint"
        )
    model.load_state_dict(state, strict=True)
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
