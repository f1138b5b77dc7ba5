"""One small registry class used by every extension point (models, losses, exporters, runtimes).

Each extension point owns one ``Registry`` instance; entries are registered by name with a
decorator and created through the registry, with ``names()`` for discovery and a
"did you mean" error for typos.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Generic, TypeVar

from edgekd.errors import UnknownNameError

T = TypeVar("T")


class Registry(Generic[T]):
    """A named collection of factories of one kind (e.g. kind="model")."""

    def __init__(self, kind: str):
        self.kind = kind
        self._entries: dict[str, T] = {}

    def register(self, name: str) -> Callable[[T], T]:
        """Decorator that registers ``obj`` under ``name``; a duplicate name is a bug, so it raises."""

        def add(obj: T) -> T:
            if name in self._entries:
                raise ValueError(f"{self.kind} {name!r} is registered twice")
            self._entries[name] = obj
            return obj

        return add

    def get(self, name: str) -> T:
        """Return the entry called ``name``; raise UnknownNameError listing valid names otherwise."""
        try:
            return self._entries[name]
        except KeyError:
            raise UnknownNameError(self.kind, name, self._entries) from None

    def names(self) -> list[str]:
        return sorted(self._entries)

    def __contains__(self, name: object) -> bool:
        return name in self._entries
