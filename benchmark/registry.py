"""A small decorator registry shared by algorithms, datasets, launchers and selection rules."""

from __future__ import annotations

import contextlib
import fnmatch
import importlib
import importlib.metadata
import sys
from collections.abc import Callable, Iterator, Sequence
from typing import Generic, TypeVar

from shiftbench.errors import ShiftbenchError, UnknownNameError

T = TypeVar("T")


class Registry(Generic[T]):
    """Maps names to objects, keeps registration order, and explains unknown names."""

    def __init__(self, kind: str, entry_point_group: str | None = None,
                 index: Callable[[], dict[str, str]] | None = None):
        """`index`: name -> module of objects that register when their module is imported (for
        names outside the always-imported modules, e.g. the demo's dataset)."""
        self.kind = kind
        self.index = index
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

    def load_index(self) -> None:
        """Import the module of every indexed name that is not registered yet."""
        if self.index is not None:
            for name, module in self.index().items():
                if name not in self._items:
                    importlib.import_module(module)

    def lookup(self, name: str) -> T:
        """`get`, after importing the module the index names for it, or loading the entry points,
        if `name` is not registered yet."""
        if name not in self._items and self.index is not None:
            module = self.index().get(name) if isinstance(name, str) else None
            if module is not None:
                importlib.import_module(module)
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

    @contextlib.contextmanager
    def scratch(self) -> Iterator[Registry[T]]:
        """Undo at exit whatever is registered inside, plug-ins loaded from entry points included
        (which are looked up afresh inside): for tests and temporary registrations."""
        items, loaded = dict(self._items), self._entry_points_loaded
        modules = set(sys.modules)
        self._entry_points_loaded = self.entry_point_group is None
        try:
            yield self
        finally:
            for name, obj in self._items.items():
                # a module first imported inside registered on import: forget it too, so that
                # importing it again registers again (shiftbench.demo_data's DigitsDemo)
                module = getattr(obj, "__module__", None)
                if name not in items and module and module not in modules:
                    sys.modules.pop(module, None)
            self._items.clear()
            self._items.update(items)
            self._entry_points_loaded = loaded

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


class NamesView(Sequence[str]):
    """A registry's names, live and read-only, in registration order (a list-like view)."""

    def __init__(self, registry: Registry):
        self._registry = registry

    def __getitem__(self, index):  # type: ignore[override]
        return list(self._registry)[index]

    def __len__(self) -> int:
        return len(self._registry)

    def __iter__(self) -> Iterator[str]:
        return iter(list(self._registry))

    def __contains__(self, name: object) -> bool:
        return name in self._registry

    def __repr__(self) -> str:
        return repr(list(self._registry))
