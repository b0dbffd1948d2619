"""Named methods of one kind, registered in one place: saliency methods, the CAM family's weightings, uncertainty
methods, 2-D projections.

A :class:`Registry` maps a name to an entry (a function, a class, a small record) and remembers the order of
registration, which is the order pages and help texts list the methods in::

    PROJECTIONS = Registry("projection method")

    @PROJECTIONS.register("pca")
    def _pca(vectors, **_): ...

    PROJECTIONS.names()            # ['pca', ...] in registration order
    PROJECTIONS.names("*cam*")     # names matching a shell-style pattern
    PROJECTIONS["pca"]             # the entry; an unknown name is a one-line error naming the nearest ones

Adding a method is one registration next to its code: the CLI's choices, the tests' parametrization and the
dispatch read the registry.
"""

from __future__ import annotations

import fnmatch
from typing import Any, Callable, Iterator

from nnfeat.errors import NnfeatError, nearest


class Registry:
    """Entries of one ``kind`` by name, in registration order."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._entries: dict[str, Any] = {}

    def register(self, name: str, entry: Any = None) -> Any:
        """Register ``entry`` under ``name`` and return it; without ``entry``, a decorator that does so."""
        if entry is None:
            return lambda value: self.register(name, value)
        if name in self._entries:
            raise ValueError(f"{self.kind} '{name}' is registered twice")
        self._entries[name] = entry
        return entry

    def names(self, pattern: str = "*", where: Callable[[Any], bool] | None = None) -> list[str]:
        """The registered names matching the shell-style ``pattern`` (and whose entry satisfies ``where``), in
        registration order."""
        return [n for n, e in self._entries.items() if fnmatch.fnmatchcase(n, pattern) and (where is None or where(e))]

    def check(self, name: str) -> str:
        """``name`` if registered, else a one-line error naming the nearest registered names."""
        if name not in self._entries:
            near = nearest(name, self._entries)
            hint = f" (nearest: {', '.join(near)})" if near else ""
            raise NnfeatError(f"unknown {self.kind} '{name}'{hint}; choose from {', '.join(self._entries)}")
        return name

    def __getitem__(self, name: str) -> Any:
        return self._entries[self.check(name)]

    def __contains__(self, name: object) -> bool:
        return name in self._entries

    def __iter__(self) -> Iterator[str]:
        return iter(self._entries)

    def __len__(self) -> int:
        return len(self._entries)

    def __repr__(self) -> str:
        return f"Registry({self.kind!r}: {', '.join(self._entries)})"


__all__ = ["Registry"]
