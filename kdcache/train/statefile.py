"""Training states without pickle: a nested state (optimiser, schedule, sampler position, history) as one
safetensors file, tensors in the body and everything else as JSON in its header."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file, safe_open

from kdcache.checkpoint import write_safetensors
from kdcache.errors import CheckpointError

STATE_FORMAT = 1
_STATE_KEY = "kdcache.train_state"
_MARKERS = ("__tensor__", "__tuple__", "__items__")


def save_state(path: str | Path, state: dict[str, Any]) -> Path:
    """Write a nested training state atomically: every tensor into a safetensors file, everything else as JSON in
    the file's header (``safe_open(path, "pt").metadata()["kdcache.train_state"]``).

    ``state`` may nest dicts (string or integer keys), lists, tuples, tensors, numbers, strings, booleans and None:
    what ``state_dict()`` of models, optimisers and LR schedulers hold. Anything else is refused: no pickle.

    >>> save_state("run/state.safetensors", {"optimizer": opt.state_dict(), "epoch": 3})  # doctest: +SKIP
    """
    tensors: dict[str, torch.Tensor] = {}
    skeleton = {"format": STATE_FORMAT, "state": _encode(state, "", tensors)}
    return write_safetensors(Path(path), tensors, {_STATE_KEY: json.dumps(skeleton)})


def load_state(path: str | Path) -> dict[str, Any]:
    """The state :func:`save_state` wrote, with tensors on the CPU."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"training checkpoint {str(path)!r} does not exist")
    with safe_open(str(path), framework="pt") as f:
        meta = (f.metadata() or {}).get(_STATE_KEY)
    if meta is None:
        raise CheckpointError(
            f"{str(path)!r} is not a kdcache training checkpoint (no {_STATE_KEY!r} header); it may be a model file "
            "written by save_model"
        )
    skeleton = json.loads(meta)
    if skeleton.get("format") != STATE_FORMAT:
        raise CheckpointError(
            f"training checkpoint {str(path)!r} has format {skeleton.get('format')!r}; this kdcache reads format "
            f"{STATE_FORMAT}. Resume with the kdcache version that wrote it or start a new run"
        )
    return _decode(skeleton["state"], load_file(path))


def _encode(obj: Any, key: str, tensors: dict[str, torch.Tensor]) -> Any:
    if isinstance(obj, torch.Tensor):
        if key in tensors:
            raise CheckpointError(f"two tensors of the training state map to the name {key!r}")
        tensors[key] = obj.detach().cpu().clone()  # a copy: safetensors refuses tensors that share storage
        return {"__tensor__": key}
    if isinstance(obj, dict):
        if any(m in obj for m in _MARKERS):
            raise CheckpointError(f"training state at {key!r} uses a reserved key {sorted(set(_MARKERS) & set(obj))}")
        encoded = {k: _encode(v, f"{key}/{k}".lstrip("/"), tensors) for k, v in obj.items()}
        if all(isinstance(k, str) for k in obj):
            return encoded
        if not all(isinstance(k, int | str) for k in obj):
            raise CheckpointError(f"training state at {key!r} has keys that are neither str nor int: {list(obj)}")
        return {"__items__": [[k, v] for k, v in encoded.items()]}
    if isinstance(obj, list | tuple):
        items = [_encode(v, f"{key}/{i}".lstrip("/"), tensors) for i, v in enumerate(obj)]
        return {"__tuple__": items} if isinstance(obj, tuple) else items
    if isinstance(obj, np.generic):
        return obj.item()
    if obj is None or isinstance(obj, bool | int | float | str):
        return obj
    raise CheckpointError(
        f"training state at {key!r} holds a {type(obj).__name__}, which kdcache does not store (only tensors, "
        "numbers, strings, lists and dicts: no pickle)"
    )


def _decode(obj: Any, tensors: dict[str, torch.Tensor]) -> Any:
    if isinstance(obj, list):
        return [_decode(v, tensors) for v in obj]
    if not isinstance(obj, dict):
        return obj
    if "__tensor__" in obj:
        return tensors[obj["__tensor__"]]
    if "__tuple__" in obj:
        return tuple(_decode(v, tensors) for v in obj["__tuple__"])
    if "__items__" in obj:
        return {k: _decode(v, tensors) for k, v in obj["__items__"]}
    return {k: _decode(v, tensors) for k, v in obj.items()}
