"""The pool: its state, read at scrape time, and the seams that time its checkouts and new
connections.

* **Checkouts**: the pool instance gets its own ``connect`` (what
  ``Engine.raw_connection`` calls) that brackets the whole acquire: queue wait, opening a
  connection, pre-ping. Cancellation and ``pool_timeout`` end it as a failed acquire. The
  ``checkin`` and ``detach`` pool events end a checkout. A checkout is named by its pool
  entry's ``record_info`` dict, which the public API hands out from both the proxied
  connection and the entry, and which lives as long as the entry.
* **New connections**: the pool's creator marks the start, the pool's ``connect`` event
  (after SQLAlchemy's own connect handlers, which may talk to the server) the end; time
  spent opening a connection inside an acquire is reported as creation, not as waiting.
* **Dispose**: ``Engine.dispose()`` swaps in ``pool.recreate()``; ``recreate`` is
  shadowed too, so the new pool is hooked before anyone can use it; the pool listeners
  travel with the dispatch ``recreate()`` hands on.
* **Returns**: the ``checkin`` event comes before the pool has the connection back (its
  ``_do_return_conn``, which may close an overflow connection, awaiting the driver under
  asyncio). Until that is over the connection is counted as returning, so the pool's own
  count, read meanwhile (a scrape, the gauges a worker writes for the others at each
  release), shows no drift; once it is over the gauges are written again.
* **Permits**: with autosize's limiter, an acquire takes a permit first. It goes back
  when the acquire fails, when the connection is back in the pool's queue (or closed,
  the pool being above its limit), or when the connection is detached.

Gauges are read from the pool itself at scrape time by :func:`read_pool_state`.
"""

from __future__ import annotations

import contextvars
from collections.abc import Callable
from time import perf_counter
from typing import Any, Protocol

from sqlalchemy.pool import (
    ConnectionPoolEntry,
    NullPool,
    Pool,
    PoolProxiedConnection,
    QueuePool,
    SingletonThreadPool,
    StaticPool,
)

from poolwatch.adapters.sqlalchemy.hooks import COMPONENT, Switch
from poolwatch.adapters.sqlalchemy.transactions import lost_transaction
from poolwatch.adapters.timing import ConnectTime
from poolwatch.events import PoolEvents, PoolState
from poolwatch.safety import FaultReporter
from poolwatch.sizing.gate import Gate

__all__ = [
    "PoolOwner",
    "following_recreate",
    "marking_creator",
    "pool_capacity",
    "pool_listeners",
    "read_pool_state",
    "returning",
    "timed_acquire",
]

_CONNECT_STARTED = "poolwatch.connect_started"  # key in a pool entry's ``info`` dict

_acquire: contextvars.ContextVar[ConnectTime | None] = contextvars.ContextVar(
    "poolwatch_sqlalchemy_acquire", default=None
)


def read_pool_state(pool: Pool) -> PoolState | None:
    """What a SQLAlchemy pool says about itself right now.

    ``QueuePool`` (and ``AsyncAdaptedQueuePool``) report their own counts;
    ``max`` is ``pool_size + max_overflow``, or ``None`` when overflow is unlimited.
    ``NullPool`` keeps nothing: poolwatch counts its checkouts. ``StaticPool`` holds one
    connection; ``SingletonThreadPool`` one per thread, with no limit.
    """
    if isinstance(pool, QueuePool):
        # Private: QueuePool exposes size() and overflow() but not the overflow limit.
        max_overflow: int = getattr(pool, "_max_overflow", -1)
        limit = None if max_overflow < 0 else pool.size() + max_overflow
        return PoolState(used=pool.checkedout(), idle=pool.checkedin(), max=limit)
    if isinstance(pool, NullPool):
        return PoolState(used=None, idle=0, max=None)
    if isinstance(pool, StaticPool):
        # Private: the entry is a memoized property, absent until the first checkout;
        # reading the property would open the connection.
        entry = pool.__dict__.get("connection")
        if entry is None or entry.dbapi_connection is None:
            return PoolState(used=0, idle=0, max=1)
        used = 1 if entry.in_use else 0
        return PoolState(used=used, idle=1 - used, max=1)
    if isinstance(pool, SingletonThreadPool):
        entries = list(getattr(pool, "_all_conns", ()))  # private: the per-thread entries
        live = [e for e in entries if e.dbapi_connection is not None]
        used = sum(1 for e in live if e.in_use)
        return PoolState(used=used, idle=len(live) - used, max=None)
    return PoolState(used=None, idle=None, max=None)


def pool_capacity(pool: object) -> tuple[bool, int | None]:
    """Whether autosize can drive ``pool`` (a QueuePool), and its hard ceiling."""
    if not isinstance(pool, QueuePool):
        return False, None
    state = read_pool_state(pool)
    return True, None if state is None else state.max


class PoolOwner(Switch, Protocol):
    """The instrumentation that hooked a pool, as its hooks see it on every call."""

    # Autosize's limiter and the acquire timeout, or None.
    gate: Gate | None
    # Connections being opened right now (the creator called, not yet returned).
    connecting: int
    # Checkouts holding a permit of the gate's limiter (their record_info ids).
    _permits: set[int]
    # Checkouts checked in and not yet back in the pool (their record_info ids).
    _returning: set[int]
    # DBAPI connections (their ids) with a transaction open (do_begin), since when.
    _opened: dict[int, float]
    # Engine.dispose() was called and the pool not used since: it has no gauges.
    retired: bool


def _holder(connection: PoolProxiedConnection) -> int:
    """A checkout's name: its pool entry's ``record_info``, which the pool listeners see
    too, or the proxied connection itself where it has no entry."""
    info = connection.record_info
    return id(connection) if info is None else id(info)


def _enter(gate: Gate) -> bool:
    """Take a permit: from a thread, or from SQLAlchemy's asyncio greenlet."""
    from poolwatch.sizing.limiter import AsyncLimiter

    if isinstance(gate.limiter, AsyncLimiter):
        # AsyncEngine runs the pool inside a greenlet that may await on the loop.
        from sqlalchemy.util import await_only

        taken: bool = await_only(gate.enter())
        return taken
    return gate.enter_blocking()


def _give_back(owner: PoolOwner, holder: int) -> None:
    gate = owner.gate
    if gate is not None and holder in owner._permits:
        owner._permits.discard(holder)
        gate.leave()


def _returned(owner: PoolOwner, events: PoolEvents, holder: int) -> None:
    """The connection checked in as ``holder`` is back in the pool (or closed)."""
    if holder in owner._returning:
        owner._returning.discard(holder)
        events.return_finished()


# -- wrappers --------------------------------------------------------------------------


def timed_acquire(
    original: Callable[[], PoolProxiedConnection],
    owner: PoolOwner,
    events: PoolEvents,
    faults: FaultReporter,
) -> Callable[[], PoolProxiedConnection]:
    """The pool's ``connect``: the whole acquire, timed, behind a permit if limited."""
    report = faults.report

    def connect() -> PoolProxiedConnection:
        if not owner._active:
            return original()
        owner.retired = False  # in use (again, after a dispose)
        try:
            ticket = events.acquire_started()
        except Exception as err:
            report(COMPONENT, err)
            return original()
        record = ConnectTime()
        token = _acquire.set(record)
        gate = owner.gate
        permit = False
        try:
            if gate is not None and gate.limiter is not None:
                permit = _enter(gate)
            connection = original()
        except BaseException as exc:
            _acquire.reset(token)
            if permit and gate is not None:
                gate.leave()
            try:
                events.acquire_failed(ticket, exc)
                if record.connecting > 0.0:  # opened, then the checkout failed
                    events.connection_created(record.connecting)
            except Exception as err:
                report(COMPONENT, err)
            raise
        _acquire.reset(token)
        try:
            holder = _holder(connection)
            if permit:
                owner._permits.add(holder)
            events.acquire_succeeded(ticket, holder, record.connecting)
        except Exception as err:
            report(COMPONENT, err)
        return connection

    return connect


def following_recreate(
    original: Callable[[], Pool],
    owner: PoolOwner,
    hook: Callable[[Pool], None],
    faults: FaultReporter,
) -> Callable[[], Pool]:
    """The pool's ``recreate`` (what ``Engine.dispose()`` calls): the new pool is
    ``hook``-ed before anyone can use it."""

    def recreate() -> Pool:
        pool = original()
        if owner._active:
            owner.retired = True  # until the new pool's first acquire
            try:
                hook(pool)
            except Exception as err:
                faults.report(COMPONENT, err)
        return pool

    return recreate


def marking_creator(
    original: Callable[[ConnectionPoolEntry], Any], owner: PoolOwner, faults: FaultReporter
) -> Callable[[ConnectionPoolEntry], Any]:
    """The pool's ``_invoke_creator``: marks when a new connection starts opening."""

    def invoke_creator(entry: ConnectionPoolEntry) -> Any:
        try:
            # Kept on the entry rather than in a dict of ours: a connect that fails
            # leaves nothing behind to leak.
            entry.info[_CONNECT_STARTED] = perf_counter()
        except Exception as err:
            faults.report(COMPONENT, err)
        # A QueuePool counts a connection as checked out from the moment it starts
        # opening it; the server shows it only once it is open (see open_connections).
        owner.connecting += 1
        try:
            return original(entry)
        finally:
            owner.connecting -= 1

    return invoke_creator


def returning(
    pool: Pool,
    original: Callable[[ConnectionPoolEntry], None],
    owner: PoolOwner,
    events: PoolEvents,
    faults: FaultReporter,
) -> Callable[[ConnectionPoolEntry], None]:
    """The pool's ``_do_return_conn``: the connection checked in is back after it (see
    the ``checkin`` listener), and with a limiter the permit goes back then too."""

    def do_return_conn(entry: ConnectionPoolEntry) -> None:
        holder = id(entry.record_info)
        try:
            gate = owner.gate
            drop = getattr(pool, "_dec_overflow", None)
            if gate is not None and callable(drop) and gate.over_limit():
                try:
                    entry.close()
                finally:
                    drop()
                return
            original(entry)
        finally:
            _give_back(owner, holder)
            try:
                _returned(owner, events, holder)
            except Exception as err:
                faults.report(COMPONENT, err)

    return do_return_conn


# -- listeners -------------------------------------------------------------------------


def pool_listeners(
    owner: PoolOwner, events: PoolEvents, faults: FaultReporter
) -> tuple[tuple[str, Callable[..., None]], ...]:
    """The pool events that end a checkout or a connection's opening, and their
    listeners, as ``(event name, listener)`` pairs."""

    def on_connect(dbapi_connection: Any, entry: ConnectionPoolEntry) -> None:
        # A listener that raises makes SQLAlchemy close the new connection: never raise.
        try:
            started = entry.info.pop(_CONNECT_STARTED, None)
            if started is None:  # opened through a creator that is not ours
                return
            seconds = perf_counter() - started
            record = _acquire.get()
            if record is not None:  # opened for a waiting checkout: creation, not waiting
                record.connecting += seconds
            else:
                events.connection_created(seconds)
        except Exception as err:
            faults.report(COMPONENT, err)

    def on_release(dbapi_connection: Any, entry: ConnectionPoolEntry) -> None:
        try:
            if dbapi_connection is not None:
                lost_transaction(owner._opened, events, faults, dbapi_connection)
            events.released(id(entry.record_info))
        except Exception as err:
            faults.report(COMPONENT, err)

    def on_checkin(dbapi_connection: Any, entry: ConnectionPoolEntry) -> None:
        # The pool takes the connection back only after this event (_do_return_conn):
        # returning until then, counted before the release so that the gauges written
        # at the release do not show the pool's count of it as drift.
        try:
            holder = id(entry.record_info)
            if holder not in owner._returning:
                owner._returning.add(holder)
                events.return_started()
        except Exception as err:
            faults.report(COMPONENT, err)
        on_release(dbapi_connection, entry)

    def on_invalidate(dbapi_connection: Any, entry: ConnectionPoolEntry, *_: Any) -> None:
        # The connection is being thrown away (a disconnect): a transaction still open on
        # it is lost, and SQLAlchemy will not call do_rollback for it.
        try:
            if dbapi_connection is not None:
                lost_transaction(owner._opened, events, faults, dbapi_connection)
        except Exception as err:
            faults.report(COMPONENT, err)

    def on_detach(dbapi_connection: Any, entry: ConnectionPoolEntry) -> None:
        # A detached connection leaves the pool for good, and never comes back to
        # _do_return_conn: its permit goes back now.
        on_release(dbapi_connection, entry)
        _give_back(owner, id(entry.record_info))

    return (
        ("connect", on_connect),
        ("checkin", on_checkin),
        ("detach", on_detach),
        ("invalidate", on_invalidate),
    )
