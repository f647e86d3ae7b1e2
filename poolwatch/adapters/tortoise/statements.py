"""Statements: the ``execute_*`` methods every Tortoise client runs its SQL through.

These are the clients' public API, so they are wrapped on every Tortoise version, known or
not. They call each other (``execute_query_dict`` -> ``execute_query_dict_with_affected``
-> ``execute_query``), so :data:`query_clock` marks "inside a statement" and only the
outermost call is timed and reported. The time a statement spent waiting for a connection
(added to its :class:`Clock` by :mod:`.checkouts`) is left out of its duration.

No private attribute of Tortoise is touched here.
"""

from __future__ import annotations

import contextvars
import functools
from collections.abc import Callable, Coroutine
from time import perf_counter
from typing import Any

from poolwatch.events import PoolEvents

__all__ = ["QUERY_METHODS", "AsyncMethod", "Clock", "query_clock", "wrap_query"]

QUERY_METHODS = (
    "execute_query",
    "execute_query_dict",
    "execute_query_dict_with_affected",
    "execute_insert",
    "execute_many",
    "execute_script",
)

AsyncMethod = Callable[..., Coroutine[Any, Any, Any]]


class Clock:
    """When the current query started, and the time inside it spent getting a
    connection, not querying."""

    __slots__ = ("acquiring", "started")

    def __init__(self, started: float) -> None:
        self.started = started
        self.acquiring = 0.0

    def querying(self) -> float:
        """Seconds of the query so far, its wait for a connection left out."""
        return perf_counter() - self.started - self.acquiring


query_clock: contextvars.ContextVar[Clock | None] = contextvars.ContextVar(
    "poolwatch_tortoise_query", default=None
)


def wrap_query(original: AsyncMethod, events_of: Callable[[Any], PoolEvents]) -> AsyncMethod:
    """``original`` (an ``execute_*`` method), timed and reported to ``events_of(client)``,
    the events of the pool the calling client belongs to."""

    async def timed(client: Any, sql: str, args: tuple[Any, ...], kwargs: Any) -> Any:
        events = events_of(client)
        events.statement_started()
        clock = Clock(perf_counter())
        token = query_clock.set(clock)
        try:
            result = await original(client, sql, *args, **kwargs)
        except BaseException as exc:
            elapsed = clock.querying()
            query_clock.reset(token)
            # A cancelled statement is not a database error; its time is still real.
            events.query(sql, elapsed, isinstance(exc, Exception), args[0] if args else None)
            raise
        elapsed = clock.querying()
        query_clock.reset(token)
        events.query(sql, elapsed, False, args[0] if args else None)
        return result

    # A plain function returning the coroutine: when another execute_* method calls
    # this one (the statement is already being timed), it hands back the original
    # coroutine itself, with no extra coroutine layer for every await inside it.
    @functools.wraps(original)
    def query(self: Any, sql: str, *args: Any, **kwargs: Any) -> Coroutine[Any, Any, Any]:
        if query_clock.get() is not None:
            return original(self, sql, *args, **kwargs)
        return timed(self, sql, args, kwargs)

    return query
