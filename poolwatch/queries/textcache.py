"""A bounded memo for pure functions of SQL text."""

from __future__ import annotations

from collections.abc import Callable
from typing import Generic, TypeVar

__all__ = ["TextCache"]

T = TypeVar("T")


class TextCache(Generic[T]):
    """Remembers ``compute(sql)`` per SQL text, emptied when it reaches ``max_entries``.

    ORMs send the same parameterised text again and again, so the hot path is one dict
    hit. Raw SQL with inlined literals could make the set of texts unbounded; clearing
    (rather than evicting one by one) keeps the miss path as cheap as the hit path.
    """

    __slots__ = ("_compute", "_entries", "_max", "known")

    def __init__(self, compute: Callable[[str], T], max_entries: int = 4096) -> None:
        self._compute = compute
        self._entries: dict[str, T] = {}
        self._max = max_entries
        self.known: Callable[[str], T | None] = self._entries.get
        """The result for ``sql`` if it was computed already, else ``None``: the dict's own
        ``get``, for a hot path that cannot afford :meth:`get`'s Python call on a hit (the
        dict is emptied, never replaced, so this stays its ``get``)."""

    def get(self, sql: str) -> T:
        """``compute(sql)``, computed once per distinct text."""
        result = self._entries.get(sql)
        if result is None:
            result = self._compute(sql)
            if len(self._entries) >= self._max:
                self._entries.clear()
            self._entries[sql] = result
        return result
