"""Checkouts: a connection taken from a pool by a context manager's ``__aenter__`` and
given back by its ``__aexit__``.

The entry is timed as the acquire wait (a connection opened meanwhile counts as creation,
not waiting), passes autosize's gate when the pool has one, and, if it fails, gives back
what it took (:meth:`.entry.Entry.undo`): ``async with`` never calls ``__aexit__`` for an
entry that raised. The exit reports the release when the application lets go, before the
driver's own housekeeping, and hands the gate's permit back once the driver has the
connection again. Tortoise's psycopg pool is guarded against the cancellations its acquire
and release cannot take (:func:`psycopg_pool_guards`).

The wrappers reach Tortoise's managers only through their :class:`~.entry.Entry` (which
says which private attributes it reads) and the manager's ``connection``; nothing else
private is touched here.
"""

from __future__ import annotations

import asyncio
import contextvars
import functools
import inspect
import logging
from collections.abc import Callable, Coroutine
from time import perf_counter
from typing import Any, Protocol

from poolwatch.adapters.completion import cancel_once, complete, complete_in_task
from poolwatch.adapters.timing import ConnectTime
from poolwatch.adapters.tortoise.asyncpg_return import Pending, ReturnHook
from poolwatch.adapters.tortoise.entry import Entry
from poolwatch.adapters.tortoise.statements import AsyncMethod, query_clock
from poolwatch.adapters.tortoise.transactions import Open, ending, outcome_of
from poolwatch.events import PoolEvents
from poolwatch.sizing.gate import Gate

__all__ = [
    "Instrumentation",
    "acquiring",
    "close_quietly",
    "psycopg_pool_guards",
    "wrap_acquire",
    "wrap_release",
]

logger = logging.getLogger("poolwatch")

# The acquire this task is inside, and the time it spent opening a connection.
acquiring: contextvars.ContextVar[ConnectTime | None] = contextvars.ContextVar(
    "poolwatch_tortoise_acquire", default=None
)


class Instrumentation(Protocol):
    """What the checkout wrappers use of the :class:`~.instrumentation.TortoiseInstrumentation`
    that installs them: its lookup of a root client's pool, and the books it keeps across
    one checkout's entry and exit."""

    # Checkouts (their managers' ids) holding a permit of a gate's limiter -> the permit's
    # return waiting inside asyncpg's own release (None: after it).
    _permits: dict[int, Pending | None]
    _returns: ReturnHook
    # Open transaction blocks, by their transaction clients' ids.
    _began: dict[int, Open]
    # Give-backs still running, shielded from their caller's cancellation.
    _shielded: set[asyncio.Task[Any]]

    def _pool(self, client: Any) -> tuple[Any, PoolEvents, Gate | None]:
        """``(client, its pool's events, its gate)`` for a root client."""
        ...


def wrap_acquire(
    original: AsyncMethod, entry: Entry, instrumentation: Instrumentation
) -> AsyncMethod:
    """A context manager's ``__aenter__``, observed as an acquire; ``entry`` knows what
    it takes."""
    pool_of = instrumentation._pool
    permits, returns = instrumentation._permits, instrumentation._returns
    began, shielded = instrumentation._began, instrumentation._shielded

    @functools.wraps(original)
    async def aenter(self: Any) -> Any:
        client = entry.owner(self)
        if client is None:  # a lock inside a transaction, not a pool checkout
            return await original(self)
        _, events, gate = pool_of(client)
        if acquiring.get() is not None:
            # A checkout inside this task's own acquire (Tortoise's MySQL client takes
            # a connection to set up the pool it is creating) is part of that acquire:
            # it passes the gate, whose permit the outer acquire holds. Through the
            # gate it would wait for a second permit forever at a limit of 1.
            gate = None
        ticket = events.acquire_started()
        record = ConnectTime()
        token = acquiring.set(record)
        before = entry.before(self)
        started = perf_counter()
        try:
            if gate is None:
                connection = await original(self)
            else:  # autosize's limiter, the acquire timeout
                permit = gate.limits()
                connection = await gate.admit(
                    lambda: original(self),
                    lambda: entry.taken(self, before),
                    lambda: _undo(entry, self, before, events, shielded),
                )
                if permit:
                    permits[id(self)] = returns.when_back(connection, gate.leave)
        except BaseException as exc:
            acquiring.reset(token)
            events.acquire_failed(ticket, exc)
            # The statement fails (and counts as an error), but the time spent
            # waiting is not the statement's duration.
            clock = query_clock.get()
            if clock is not None:
                clock.acquiring += perf_counter() - started
            if gate is None:  # (a gate undoes the entry before its permit goes back)
                await _undo(entry, self, before, events, shielded)
            raise
        acquiring.reset(token)
        # Inside a statement's timing: the statement takes its own connection, and gives
        # it back before it returns (a transaction's BEGIN is sent by the application).
        clock = query_clock.get()
        own = clock is not None and not entry.transaction
        events.acquire_succeeded(ticket, id(self), record.connecting, own=own)
        if entry.transaction:  # BEGIN was sent on the way in
            events.transaction_started()
            began[id(entry.client(self))] = Open(perf_counter())
        if clock is not None:
            clock.acquiring += perf_counter() - started
        return connection

    return aenter


def wrap_release(
    original: AsyncMethod, entry: Entry, instrumentation: Instrumentation, *, trims: bool
) -> AsyncMethod:
    """A context manager's ``__aexit__``, observed as a release (``trims``: a bare
    release, which autosize may close on the way back)."""
    pool_of = instrumentation._pool
    permits, returns = instrumentation._permits, instrumentation._returns
    began = instrumentation._began

    # The checkout ends when the application lets go of the connection, before the
    # driver's own housekeeping (asyncpg resets it, a round trip); until that is over
    # the connection is counted as returning, so the driver's count can be checked:
    # from before the release, whose gauges multiprocess mode writes at once.
    @functools.wraps(original)
    def aexit(self: Any, *exc_info: Any) -> Coroutine[Any, Any, Any]:
        client = entry.owner(self)
        if client is None:
            return original(self, *exc_info)
        _, events, gate = pool_of(client)
        # Released inside a statement being timed: the statement's own checkout,
        # whose time is reported after this (a transaction ends outside any).
        clock = query_clock.get()
        events.return_started()
        events.released(id(self), clock.querying() if clock is not None else 0.0)
        release = original(self, *exc_info)
        if entry.transaction:
            events.transaction_ended()
            state = began.pop(id(entry.client(self)), None)
            if state is not None:
                outcome = outcome_of(exc_info[0], state.rolled_back)
                release = ending(release, events, outcome, state.since)
        if gate is None or id(self) not in permits:
            return _returning(release, events)
        return _release_through(
            gate,
            release,
            self if trims else None,
            returns,
            permits.pop(id(self)),
            events=events,
        )

    return aexit


def psycopg_pool_guards(
    acquire: AsyncMethod, release: AsyncMethod, shielded: set[asyncio.Task[Any]]
) -> tuple[AsyncMethod, AsyncMethod]:
    """Tortoise's psycopg pool's ``acquire`` and ``release``: its acquire takes at most one
    cancellation, its release none. psycopg_pool cleans up after a cancellation by awaiting
    (an acquire gives back the connection it was checking), and its ``putconn`` waits for
    the pool's lock, contended under load: a cancellation landing in either drops the
    connection, which the pool goes on counting (the fault campaign lost 2 to 7 of 10 over
    60,000 requests with cancellations). asyncpg shields its own release; this does the
    same for psycopg, at no cost when the call does not have to wait."""

    def give_back(pool: Any) -> Callable[[Any], Coroutine[Any, Any, Any]]:
        return lambda connection: complete(release(pool, connection), shielded)

    @functools.wraps(acquire)
    def acquire_once(pool: Any, *args: Any, **kwargs: Any) -> Coroutine[Any, Any, Any]:
        return cancel_once(acquire(pool, *args, **kwargs), shielded, give_back(pool))

    @functools.wraps(release)
    def release_fully(pool: Any, connection: Any) -> Coroutine[Any, Any, Any]:
        return complete(release(pool, connection), shielded)

    return acquire_once, release_fully


async def _undo(
    entry: Entry, manager: Any, before: Any, events: PoolEvents, shielded: set[asyncio.Task[Any]]
) -> None:
    """Give back what a failed entry took, shielded: a second cancellation ends the
    wait for it, never the give-back itself."""
    try:
        giving = entry.undo(manager, before)
    except Exception as exc:  # poolwatch's own knowledge of Tortoise failed
        giving = None
        logger.warning("poolwatch: could not undo a failed Tortoise entry: %r", exc)
        events.reclaimed("failed")
    if giving is None:
        return
    events.return_started()
    await complete_in_task(_finish_undo(giving, events), shielded)


async def _finish_undo(giving: Coroutine[Any, Any, str], events: PoolEvents) -> None:
    try:
        outcome = await giving
    except Exception as exc:
        outcome = "failed"
        logger.warning(
            "poolwatch: giving back a connection taken by a failed entry raised %r; it may "
            "be lost (see poolwatch_pool_drift)",
            exc,
        )
    finally:
        events.return_finished()
    events.reclaimed(outcome)


async def _returning(release: Coroutine[Any, Any, Any], events: PoolEvents) -> Any:
    try:
        return await release
    finally:
        events.return_finished()


async def _release_through(
    gate: Gate,
    release: Coroutine[Any, Any, Any],
    manager: Any,
    returns: ReturnHook,
    pending: Pending | None,
    *,
    events: PoolEvents,
) -> Any:
    """Release a connection under autosize: closed if the pool holds too many, then the
    permit goes back once the driver has the connection (never before): from inside
    asyncpg's own return when it is ``pending`` there, else here once the release is
    over (or was cancelled)."""
    try:
        if manager is not None and gate.over_limit():
            await close_quietly(getattr(manager, "connection", None))
        return await release
    finally:
        events.return_finished()
        if pending is None or returns.cancel(pending):
            gate.leave()


async def close_quietly(connection: Any) -> None:
    """Close a driver connection so the pool drops it on release (asyncpg, psycopg and
    aiomysql all discard a closed connection handed back to them), or SQLite's half-open
    one (aiosqlite 0.17's close, which fails there, still stops its thread)."""
    if connection is None:
        return
    try:
        closing = connection.close()
        if inspect.isawaitable(closing):
            await closing
    except Exception:  # the release that follows still returns it, open or not
        logger.debug("poolwatch: closing a connection failed", exc_info=True)
