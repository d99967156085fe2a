"""Named registries (models, datasets, targets, losses) that refuse duplicates and explain misses, and import paths
(``module:callable``) with :class:`Factory`, the way a user's own code is named where a registered name would be."""

from __future__ import annotations

import difflib
import importlib
import json
import re
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
            return import_callable(name, what=self.kind)  # type: ignore[return-value]
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
