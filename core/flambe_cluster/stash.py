"""A typed store for what each step module keeps on a session (after pytest's ``Stash``).

A module declares its key once, ``RESOURCES = StashKey[dict[Instance, Resources]]()``,
and reads and writes ``session.stash[RESOURCES]``; the session holding the
stash knows nothing of what the steps keep there.  Keys are compared by
identity, so two modules never collide.
"""

from __future__ import annotations

from typing import Any, Generic, TypeVar, cast

T = TypeVar("T")
D = TypeVar("D")

__all__ = ["Stash", "StashKey"]


class StashKey(Generic[T]):
    """A key of a :class:`Stash` whose values are of type ``T``; declared once, at module level."""

    __slots__ = ()


class Stash:
    """Values by :class:`StashKey`, each typed by its key."""

    __slots__ = ("_values",)

    def __init__(self) -> None:
        self._values: dict[StashKey[Any], object] = {}

    def __setitem__(self, key: StashKey[T], value: T) -> None:
        self._values[key] = value

    def __getitem__(self, key: StashKey[T]) -> T:
        """The value of ``key``; raises KeyError when none was set."""
        return cast(T, self._values[key])

    def get(self, key: StashKey[T], default: D) -> T | D:
        """The value of ``key``, or ``default`` when none was set."""
        return cast(T, self._values[key]) if key in self._values else default

    def pop(self, key: StashKey[T], default: D) -> T | D:
        """Remove and return the value of ``key``, or ``default`` when none was set."""
        return cast(T, self._values.pop(key)) if key in self._values else default

    def setdefault(self, key: StashKey[T], default: T) -> T:
        """The value of ``key``, setting it to ``default`` first when none was set."""
        return cast(T, self._values.setdefault(key, default))
