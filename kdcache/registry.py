"""Named registries (models, datasets, targets, losses) that refuse duplicates and explain misses."""

from __future__ import annotations

import difflib
from collections.abc import Callable, Iterator
from typing import Generic, TypeVar

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

    def unknown_message(self, name: str) -> str:
        """The message for an unknown name: the nearest match first, then every valid choice."""
        close = difflib.get_close_matches(name, self._entries, n=1)
        hint = f" Did you mean {close[0]!r}?" if close else ""
        return f"unknown {self.kind} {name!r}.{hint} Valid choices: {', '.join(sorted(self._entries))}"

    def names(self) -> list[str]:
        """All registered names, sorted."""
        return sorted(self._entries)

    def __contains__(self, name: object) -> bool:
        return name in self._entries

    def __iter__(self) -> Iterator[str]:
        return iter(sorted(self._entries))
