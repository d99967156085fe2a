"""Named registries (models, datasets, targets, losses) that refuse duplicates and explain misses, and import paths
(``module:callable``) with :class:`Factory`, the way a user's own code is named where a registered name would be.

Also how packages name their public surface: :func:`lazy_exports` (names that import on first use) and the names
renamed in 0.2, kept for one release with a warning (:func:`moved_names`, :func:`moved_module`,
:func:`renamed_method`; CHANGELOG.md lists them)."""

from __future__ import annotations

import difflib
import importlib
import json
import re
import sys
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any, ClassVar, Generic, TypeVar

from pydantic import BaseModel, ConfigDict, ValidationError, model_validator

from kdcache.errors import RegistryError

T = TypeVar("T")


class Registry(Generic[T]):
    """A mapping from names to factories, filled with the :meth:`register` decorator.

    >>> models: Registry[type] = Registry("model")
    >>> @models.register("tiny")
    ... class Tiny: ...
    >>> models.get("tiny") is Tiny
    True
    """

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._entries: dict[str, T] = {}

    def register(self, name: str) -> Callable[[T], T]:
        """Decorator that registers its argument under ``name``; a second registration of a name is an error."""

        def add(entry: T) -> T:
            if name in self._entries:
                raise RegistryError(f"{self.kind} {name!r} is already registered; choose another name")
            self._entries[name] = entry
            return entry

        return add

    def get(self, name: str) -> T:
        """The entry called ``name``; a miss names the closest known entries and lists them all."""
        try:
            return self._entries[name]
        except KeyError:
            raise RegistryError(self.unknown_message(name)) from None

    def resolve(self, name: str) -> T:
        """The entry called ``name``, or the callable an import path names (``"torchvision.models:resnet18"``):
        wherever a registered name is accepted, the user's own code is too."""
        if is_import_path(name):
            return import_callable(name, what=self.kind)  # type: ignore[return-value]  # the user's callable stands in for a T
        return self.get(name)

    def check_known(self, name: str) -> str:
        """``name`` if it is registered or shaped like an import path; nothing is imported (a dask worker, not this
        process, may be the one that has the module)."""
        if name in self._entries or _IMPORT_PATH.match(name):
            return name
        raise RegistryError(self.unknown_message(name))

    def unknown_message(self, name: str) -> str:
        """The message for an unknown name: the nearest match first, then every valid choice."""
        close = difflib.get_close_matches(name, self._entries, n=1)
        hint = f" Did you mean {close[0]!r}?" if close else ""
        return (
            f"unknown {self.kind} {name!r}.{hint} Valid choices: {', '.join(sorted(self._entries))}, or an import "
            "path 'package.module:callable' to your own"
        )

    def names(self) -> list[str]:
        """All registered names, sorted."""
        return sorted(self._entries)

    def __contains__(self, name: object) -> bool:
        return name in self._entries

    def __iter__(self) -> Iterator[str]:
        return iter(sorted(self._entries))


def import_callable(path: str, *, what: str = "callable") -> Callable[..., Any]:
    """The callable an import path names: ``"torchvision.models:resnet18"`` (or ``"package.module.attr"``).

    Errors say which part failed and how to fix it: a module that does not import (and why), or an attribute the
    module does not have (with the nearest names it does have).
    """
    module_name, sep, attribute = path.partition(":")
    if not sep:
        module_name, _, attribute = path.rpartition(".")
    if not module_name or not attribute:
        raise RegistryError(f"{what} {path!r} is not an import path; write it as 'package.module:callable'")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise RegistryError(
            f"{what} {path!r}: module {module_name!r} does not import ({type(exc).__name__}: {exc}). Install it, or "
            "put the directory that holds it on PYTHONPATH (on every dask worker too)"
        ) from None
    found: Any = module
    for part in attribute.split("."):
        if not hasattr(found, part):
            public = [n for n in dir(found) if not n.startswith("_")]
            close = difflib.get_close_matches(part, public, n=3)
            hint = f" Did you mean {', '.join(repr(c) for c in close)}?" if close else ""
            raise RegistryError(f"{what} {path!r}: {module_name!r} has no attribute {part!r}.{hint}")
        found = getattr(found, part)
    if not callable(found):
        raise RegistryError(f"{what} {path!r} names a {type(found).__name__}, which cannot be called")
    return found


def lazy_exports(
    package: str, exports: dict[str, str], moved: dict[str, str] | None = None
) -> tuple[Callable[[str], Any], Callable[[], list[str]]]:
    """The PEP 562 ``__getattr__`` and ``__dir__`` of a package whose public names import on first use.

    ``exports`` maps each public name to the module defining it, so importing the package (or any module under it,
    which runs the package's ``__init__`` first) costs nothing until a name is used: ``import kdcache.store`` must
    not import torch because ``kdcache`` also exports ``fit``. ``moved`` maps an old name to ``"module:name"``, where
    it lives now (:func:`moved_names`).
    """
    module = sys.modules[package]
    old_names = moved_names(package, moved or {})

    def __getattr__(name: str) -> Any:
        if name in exports:
            value = getattr(importlib.import_module(exports[name]), name)
            setattr(module, name, value)  # the next lookup finds it without this hook
            return value
        return old_names(name)

    def __dir__() -> list[str]:
        return sorted(set(module.__dict__) | set(exports))

    return __getattr__, __dir__


REMOVED_IN = "0.3"
"""The release that drops the names renamed in 0.2 (CHANGELOG.md lists every one)."""


class LazyModule:
    """A module imported on first attribute use: what lets a module whose *encoding* needs torch be imported, for
    its parameters and stored-value checks, by a command that never encodes (``kdcache verify`` starts without torch).

    Modules write ``torch = LazyModule("torch")`` (with the real import under ``TYPE_CHECKING``, for the checker); the
    first ``torch.x`` imports torch, and each attribute is then kept on the proxy, so later uses cost what a module
    attribute costs."""

    def __init__(self, name: str) -> None:
        self.__name = name

    def __getattr__(self, attribute: str) -> Any:
        if attribute.startswith("__") or attribute.startswith("_LazyModule"):  # copy, pickle, introspection
            raise AttributeError(attribute)
        value = getattr(importlib.import_module(self.__name), attribute)
        setattr(self, attribute, value)
        return value

    def __repr__(self) -> str:
        return f"<lazy module {self.__name!r}>"


def warn_renamed(old: str, new: str) -> None:
    """Warn that ``old`` is now ``new``, at the first line outside kdcache (the user's code that used it)."""
    level, frame = 1, sys._getframe(0)
    while frame.f_back is not None and frame.f_globals.get("__name__", "").partition(".")[0] == "kdcache":
        frame, level = frame.f_back, level + 1
    warnings.warn(
        f"{old} is deprecated: use {new} (the old name goes in kdcache {REMOVED_IN}; CHANGELOG.md lists every rename)",
        DeprecationWarning,
        stacklevel=level,
    )


def moved_names(module: str, aliases: dict[str, str]) -> Callable[[str], Any]:
    """A module ``__getattr__`` serving old names (``aliases``: old name → ``"new.module:new_name"``) with a
    warning; nothing is imported until an old name is used."""

    def __getattr__(name: str) -> Any:
        if name not in aliases:
            raise AttributeError(f"module {module!r} has no attribute {name!r}")
        target_module, _, target = aliases[name].partition(":")
        warn_renamed(f"{module}.{name}", f"{target_module}.{target}")
        return getattr(importlib.import_module(target_module), target)

    return __getattr__


def moved_module(module: str, target_module: str, renames: dict[str, str] | None = None) -> Callable[[str], Any]:
    """The ``__getattr__`` of a renamed module's shim: every attribute forwards to ``target_module`` (under its new
    name where ``renames`` gives one), with a warning."""
    renamed = renames or {}

    def __getattr__(name: str) -> Any:
        target = renamed.get(name, name)
        value = getattr(importlib.import_module(target_module), target)
        warn_renamed(f"{module}.{name}", f"{target_module}.{target}")
        return value

    return __getattr__


def renamed_method(owner: str, old: str, new: str) -> Callable[..., Any]:
    """Method ``old`` of class ``owner``, forwarding to ``new`` on the same object with a warning."""

    def forward(self: Any, *args: Any, **kwargs: Any) -> Any:
        warn_renamed(f"{owner}.{old}", f"{owner}.{new}")
        return getattr(self, new)(*args, **kwargs)

    return forward


_IMPORT_PATH = re.compile(r"^[A-Za-z_][\w.]*:[A-Za-z_][\w.]*$")


def is_import_path(name: str) -> bool:
    """True for ``module:callable`` names (registered names never contain a colon)."""
    return ":" in name


@dataclass(frozen=True)
class Factory:
    """An importable callable and its arguments: what crosses process boundaries instead of a pickled object.

    A dask worker started elsewhere rebuilds the object from code installed there, and the factory's description
    (``describe()``) is small, JSON-able and part of fingerprints.

    >>> Factory("torchvision.models:resnet18", kwargs={"num_classes": 10}).build()  # doctest: +SKIP
    """

    target: str
    args: tuple[Any, ...] = ()
    kwargs: dict[str, Any] = field(default_factory=dict)

    def build(self) -> Any:
        return import_callable(self.target, what="factory")(*self.args, **self.kwargs)

    def describe(self) -> dict[str, Any]:
        return {"factory": self.target, "args": list(self.args), "kwargs": dict(self.kwargs)}

    def __hash__(self) -> int:  # kwargs is a dict: hash the JSON-able description instead
        return hash(json.dumps(self.describe(), sort_keys=True, default=str))


class RegisteredEntry(BaseModel):
    """A config entry that names a registered kind (``{name: kd, temperature: 4}``); its other keys are validated
    by that kind's ``Params`` model, so a misspelt key is an error that lists the valid ones."""

    model_config = ConfigDict(extra="allow", frozen=True, allow_inf_nan=False)  # finite weights only
    _registry: ClassVar[Registry[Any]]
    _key: ClassVar[str] = "name"

    @model_validator(mode="after")
    def _check_params(self) -> RegisteredEntry:
        name = getattr(self, self._key)
        try:
            params_model = self._registry.get(name).Params
        except RegistryError as exc:
            raise ValueError(str(exc)) from None
        try:
            params_model.model_validate(self.params)
        except ValidationError as exc:
            valid = ", ".join(params_model.model_fields)
            raise ValueError(f"{name}: {short_errors(exc)} (valid keys: {valid or 'none'})") from None
        return self

    @property
    def params(self) -> dict[str, Any]:
        """The entry's keys other than its name (and the fields a subclass declares)."""
        return dict(self.model_extra or {})


def short_errors(exc: ValidationError) -> str:
    """A pydantic validation error on one line: ``where: what`` per problem."""
    return "; ".join(f"{'.'.join(map(str, e['loc'])) or 'value'}: {e['msg']}" for e in exc.errors())


Registry.check_name = renamed_method("Registry", "check_name", "check_known")  # type: ignore[attr-defined]  # 0.2 alias
