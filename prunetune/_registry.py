"""One tiny registry type for every "name → thing" table: spaces, samplers, objectives,
importance criteria, rank-by metrics, latency runtimes and start-point families.

A :class:`Registry` is a read-only mapping (``name in r``, ``r[name]``, ``r.get(name)``,
``list(r)`` work as on the dicts it replaces) plus :meth:`Registry.register` and
:meth:`Registry.lookup`, whose error names the kind, the bad name and the valid ones. It
imports nothing, so every layer can use it.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Callable, Generic, TypeVar

T = TypeVar("T")


class Registry(Mapping[str, T], Generic[T]):
    """Things of one ``kind`` by name, in registration order."""

    def __init__(self, kind: str, items: Mapping[str, T] | None = None) -> None:
        self.kind = kind
        self._items: dict[str, T] = {}
        for name, item in (items or {}).items():
            self.add(name, item)

    def add(self, name: str, item: T) -> T:
        """Register ``item`` under ``name``.

        Raises:
            ValueError: ``name`` is registered already.
        """
        if name in self._items:
            raise ValueError(f"{self.kind} {name!r} is registered already; pick another name.")
        self._items[name] = item
        return item

    def register(self, name: str) -> Callable[[T], T]:
        """Decorator form of :meth:`add`."""
        return lambda item: self.add(name, item)

    def lookup(self, name: str) -> T:
        """The thing registered under ``name`` (``get`` is the mapping's: None if missing).

        Raises:
            ValueError: ``name`` is not registered (the message lists the valid names).
        """
        if name not in self._items:
            raise ValueError(f"Unknown {self.kind} {name!r}; valid names are {list(self)}.")
        return self._items[name]

    def __getitem__(self, name: str) -> T:
        return self._items[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self._items)

    def __len__(self) -> int:
        return len(self._items)

    def __repr__(self) -> str:
        return f"Registry({self.kind!r}, {list(self)})"
