"""A tiny name -> factory registry, filled by decorators (in the style of timm)."""

from __future__ import annotations

import difflib
from collections.abc import Callable, Iterable
from typing import Generic, TypeVar

T = TypeVar("T")


def unknown_name_error(kind: str, name: object, options: Iterable[str]) -> ValueError:
    """A one-line ValueError naming the bad value, the closest match and the options."""
    options = sorted(options)
    close = difflib.get_close_matches(str(name), options, n=1, cutoff=0.5)
    hint = f" Did you mean {close[0]!r}?" if close else ""
    shown = ", ".join(options[:40]) + (", ..." if len(options) > 40 else "")
    return ValueError(f"unknown {kind} {name!r}.{hint} Options: {shown}")


class Registry(Generic[T]):
    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._entries: dict[str, T] = {}

    def register(self, name: str) -> Callable[[T], T]:
        def deco(obj: T) -> T:
            if name in self._entries:
                raise ValueError(f"{self.kind} {name!r} is registered twice")
            self._entries[name] = obj
            return obj

        return deco

    def get(self, name: str) -> T:
        try:
            return self._entries[name]
        except KeyError:
            raise unknown_name_error(self.kind, name, self._entries) from None

    def names(self) -> list[str]:
        return sorted(self._entries)

    def __contains__(self, name: object) -> bool:
        return name in self._entries
