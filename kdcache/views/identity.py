"""What a view step *is*, as JSON: the identity a store records for each step of a torchvision pipeline.

A step's ``repr`` is not its identity: ``v2.Lambda`` prints ``Lambda(<lambda>, types=['object'])`` whatever the
lambda does, ``RandomApply`` leaves out ``p``, a user's class prints ``Gamma()`` whatever its arguments, and a plain
callable object prints its memory address (different in every process). :func:`describe_step` describes a step by
what decides its output instead:

* a torchvision transform, ``nn.Module`` or any other object: its class path and the description of every attribute
  (nested transforms, tensors by digest, enums, dtypes), never its address;
* a function or lambda: its qualified name, a digest of its source (or, without source, of its bytecode, with the
  Python version), the constants and names its code uses, its defaults, the values its closure holds and the module
  globals it reads that are plain data (numbers, strings, lists, tuples and dicts of them) or user functions;
* an object may describe itself with a ``kdcache_identity()`` method returning JSON-able data.

A step that cannot be described (an extension object with no attributes, a cycle, nesting deeper than
:data:`MAX_DEPTH`) is refused with :class:`~kdcache.errors.ConfigError` when the view spec is made, with the fix.
The description is a strong hint, not the proof: the per-view input digest that stage one records is what proves
that stage two replays the teacher's input (:mod:`kdcache.views.digest`).
"""

from __future__ import annotations

import enum
import functools
import hashlib
import inspect
import math
import sys
import types
from typing import Any

import numpy as np
import torch
from torch import nn

from kdcache.errors import ConfigError

MAX_DEPTH = 24
_LIBRARIES = ("torch", "torchvision", "numpy", "PIL", "builtins", "math", "random", "functools", "kdcache", "timm")
_MODULE_MACHINERY = frozenset(vars(nn.Module())) - {"_parameters", "_buffers", "_modules"}
_PLAIN = (bool, int, str, type(None))
_SCALARS = (*_PLAIN, float)


def describe_step(step: Any) -> Any:
    """The JSON-able identity of a view step (see the module docstring); raises ConfigError if it has none."""
    return _Describer().describe(step, 0, "step")


class _Describer:
    """One description: remembers the objects on the current path, so a cycle is refused instead of looping."""

    def __init__(self) -> None:
        self.path: set[int] = set()

    def describe(self, value: Any, depth: int, where: str) -> Any:
        if depth > MAX_DEPTH:
            raise _unidentifiable(where, value, f"it nests deeper than {MAX_DEPTH} levels")
        if isinstance(value, enum.Enum):
            return {"enum": _path(type(value)), "value": self.describe(value.value, depth + 1, where)}
        if isinstance(value, _PLAIN):
            return value
        if isinstance(value, float):
            return value if math.isfinite(value) else repr(value)
        if isinstance(value, torch.dtype | torch.device):
            return {"torch": str(value)}
        if isinstance(value, torch.Tensor | np.ndarray):
            return _array(value)
        if isinstance(value, type):
            return {"class": _path(value)}
        if isinstance(value, types.ModuleType):
            return {"module": value.__name__}
        if id(value) in self.path:
            if isinstance(value, types.FunctionType):  # recursion: the function is being described already
                return {"function": f"{value.__module__}:{value.__qualname__}", "recursive": True}
            raise _unidentifiable(where, value, "it refers back to itself (a cycle)")
        self.path.add(id(value))
        try:
            return self._compound(value, depth, where)
        finally:
            self.path.discard(id(value))

    def _compound(self, value: Any, depth: int, where: str) -> Any:
        if isinstance(value, list | tuple):
            return [self.describe(v, depth + 1, f"{where}[{k}]") for k, v in enumerate(value)]
        if isinstance(value, dict):
            return {str(k): self.describe(v, depth + 1, f"{where}.{k}") for k, v in sorted(value.items(), key=_key)}
        if isinstance(value, set | frozenset):
            return {"set": sorted((self.describe(v, depth + 1, where) for v in value), key=repr)}
        if callable(getattr(value, "kdcache_identity", None)) and not isinstance(value, type):
            return {"class": _path(type(value)), "identity": self.describe(value.kdcache_identity(), depth + 1, where)}
        if isinstance(value, functools.partial):
            parts = {"func": value.func, "args": list(value.args), "keywords": dict(value.keywords)}
            return {"partial": self.describe(parts, depth + 1, where)}
        if isinstance(value, types.MethodType):
            owner = self.describe(value.__self__, depth + 1, where)
            return {"method": value.__func__.__qualname__, "of": owner}
        if isinstance(value, types.FunctionType):
            return self._function(value, depth, where)
        if isinstance(value, types.BuiltinFunctionType | types.BuiltinMethodType) or _is_library_callable(value):
            return {"function": f"{getattr(value, '__module__', None)}:{getattr(value, '__qualname__', value)}"}
        return self._object(value, depth, where)

    def _object(self, value: Any, depth: int, where: str) -> dict[str, Any]:
        state = _state(value)
        if state is None and _library(type(value)):  # a library's extension object (a generator, a C type)
            return {"class": _path(type(value))}
        if state is None:
            raise _unidentifiable(where, value, "it has no attributes kdcache can read (no __dict__ or __slots__)")
        return {"class": _path(type(value)), "state": self.describe(state, depth + 1, where)}

    def _function(self, function: types.FunctionType, depth: int, where: str) -> dict[str, Any]:
        code = function.__code__
        described: dict[str, Any] = {"function": f"{function.__module__}:{function.__qualname__}"}
        described.update(_code_identity(code))
        if function.__defaults__:
            described["defaults"] = self.describe(list(function.__defaults__), depth + 1, where)
        if function.__kwdefaults__:
            described["kwdefaults"] = self.describe(dict(function.__kwdefaults__), depth + 1, where)
        if function.__closure__:
            cells = [cell.cell_contents for cell in function.__closure__]
            described["closure"] = self.describe(cells, depth + 1, f"{where} (closure)")
        read = {name: function.__globals__[name] for name in _names(code) if name in function.__globals__}
        plain = {name: v for name, v in read.items() if isinstance(v, (*_SCALARS, tuple, list, dict)) and _data(v)}
        user = {name: v for name, v in read.items() if isinstance(v, types.FunctionType) and not _library(v)}
        if plain or user:
            described["globals"] = self.describe(plain | user, depth + 1, f"{where} (globals)")
        return described


def _data(value: Any, depth: int = 0) -> bool:
    """Plain data (numbers, strings, and lists, tuples and dicts of them): what a function may read as settings."""
    if depth > MAX_DEPTH:
        return False
    if isinstance(value, list | tuple):
        return all(_data(v, depth + 1) for v in value)
    if isinstance(value, dict):
        return all(isinstance(k, str) and _data(v, depth + 1) for k, v in value.items())
    return isinstance(value, _SCALARS)


def _code_identity(code: types.CodeType) -> dict[str, Any]:
    """Source digest (or bytecode digest under this Python), and the constants and names the code uses."""
    try:
        source = inspect.getsource(code)
        identity: dict[str, Any] = {"source": hashlib.sha256(source.encode()).hexdigest()[:32]}
    except (OSError, TypeError):
        python = f"{sys.version_info.major}.{sys.version_info.minor}"
        identity = {"bytecode": hashlib.sha256(code.co_code).hexdigest()[:32], "python": python}
    identity["consts"] = [_const(c) for c in code.co_consts]
    identity["names"] = sorted(_names(code))
    return identity


def _const(value: Any) -> Any:
    if isinstance(value, types.CodeType):
        return _code_identity(value)
    if isinstance(value, float) and not math.isfinite(value):
        return repr(value)
    if isinstance(value, _SCALARS):
        return value
    if isinstance(value, tuple | frozenset):
        return [_const(v) for v in value]
    return repr(value)


def _names(code: types.CodeType) -> set[str]:
    """Global and attribute names the code (and the code nested in it) uses."""
    names = set(code.co_names)
    for const in code.co_consts:
        if isinstance(const, types.CodeType):
            names |= _names(const)
    return names


def _state(value: Any) -> dict[str, Any] | None:
    """The attributes that decide what an object computes: ``__dict__`` and ``__slots__``, without the bookkeeping
    every ``nn.Module`` carries (hooks, the training flag); parameters, buffers and submodules by name."""
    found: dict[str, Any] = {}
    slots = [s for cls in type(value).__mro__ for s in getattr(cls, "__slots__", ()) if isinstance(s, str)]
    for name in slots:
        if name != "__weakref__" and name != "__dict__" and hasattr(value, name):
            found[name] = getattr(value, name)
    if hasattr(value, "__dict__"):
        found.update(vars(value))
    elif not slots:
        return None
    if isinstance(value, nn.Module):
        found = {k: v for k, v in found.items() if k not in _MODULE_MACHINERY}
        for group in ("_parameters", "_buffers", "_modules"):
            members = dict(found.pop(group, None) or {})
            if members:
                found[group.lstrip("_")] = members
    return found


def _array(value: torch.Tensor | np.ndarray) -> dict[str, Any]:
    array = (
        value.detach().cpu().contiguous().numpy() if isinstance(value, torch.Tensor) else np.ascontiguousarray(value)
    )
    digest = hashlib.sha256(array.tobytes()).hexdigest()[:32]
    return {"array": array.dtype.str, "shape": list(array.shape), "sha256": digest}


def _path(cls: type) -> str:
    return f"{cls.__module__}:{cls.__qualname__}"


def _library(function: Any) -> bool:
    module = getattr(function, "__module__", None) or ""
    return module.split(".")[0] in _LIBRARIES


def _is_library_callable(value: Any) -> bool:
    """A function-like object of a library (a ufunc, a torch op, a C function): identified by its name."""
    return not hasattr(value, "__dict__") and hasattr(value, "__qualname__") and _library(value)


def _key(item: tuple[Any, Any]) -> str:
    return str(item[0])


def _unidentifiable(where: str, value: Any, why: str) -> ConfigError:
    return ConfigError(
        f"view step {where} ({type(value).__module__}.{type(value).__qualname__}) cannot be identified: {why}. A "
        "store records what each step is, so another process can prove it replays the same views. Give the object "
        "plain attributes (numbers, strings, tensors, other transforms), or a method kdcache_identity() that returns "
        "JSON-able data describing everything that decides its output"
    )
