"""A small decorator registry shared by algorithms, datasets, launchers and selection rules."""

from __future__ import annotations

import fnmatch
import importlib.metadata
from collections.abc import Callable, Iterator
from typing import Generic, TypeVar

from shiftbench.errors import ShiftbenchError, UnknownNameError

T = TypeVar("T")


class Registry(Generic[T]):
    """Maps names to objects, keeps registration order, and explains unknown names."""

    def __init__(self, kind: str, entry_point_group: str | None = None):
        self.kind = kind
        self.entry_point_group = entry_point_group
        self._entry_points_loaded = entry_point_group is None
        self._items: dict[str, T] = {}

    def load_entry_points(self) -> None:
        """Import, once, what installed packages declare under this registry's entry-point group."""
        if self._entry_points_loaded:
            return
        self._entry_points_loaded = True
        for ep in importlib.metadata.entry_points(group=self.entry_point_group):
            ep.load()

    def lookup(self, name: str) -> T:
        """`get`, after loading the entry points if `name` is not registered yet."""
        if name not in self._items:
            self.load_entry_points()
        return self.get(name)

    def register(self, name: str | None = None, *, overwrite: bool = False) -> Callable[[T], T]:
        def decorator(obj: T) -> T:
            key = name or getattr(obj, "NAME", None) or obj.__name__  # type: ignore[attr-defined]
            if key in self._items and self._items[key] is not obj and not overwrite:
                raise ShiftbenchError(
                    f"{self.kind} {key!r} is already registered by "
                    f"{getattr(self._items[key], '__module__', '?')}; pass overwrite=True to replace it"
                )
            self._items[key] = obj
            return obj

        return decorator

    def get(self, name: str) -> T:
        try:
            return self._items[name]
        except (KeyError, TypeError):
            raise UnknownNameError(self.kind, name, self._items) from None

    def names(self, pattern: str = "*") -> list[str]:
        """Registered names matching a shell-style pattern (case-sensitive), in registration order."""
        return [n for n in self._items if fnmatch.fnmatchcase(n, pattern)]

    def __contains__(self, name: object) -> bool:
        return name in self._items

    def __iter__(self) -> Iterator[str]:
        return iter(self._items)

    def __len__(self) -> int:
        return len(self._items)

    def items(self) -> list[tuple[str, T]]:
        return list(self._items.items())
