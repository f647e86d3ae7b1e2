"""Transactions: the dialect instance's ``do_begin``, ``do_commit``, ``do_rollback`` and
``do_rollback_to_savepoint``, wrapped (removed on uninstall).

A transaction that ``do_begin`` opened is named by its DBAPI connection and ends in one of
the outcomes of :mod:`poolwatch.events`: committed, rolled back by the application, closed
without a commit, or rolled back by an error (so is one still open when its connection goes
back to the pool or is thrown away: :func:`lost_transaction`).
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from time import perf_counter
from types import FrameType
from typing import Any

from poolwatch.adapters.sqlalchemy.hooks import COMPONENT, Switch
from poolwatch.events import (
    CLOSED,
    COMMIT,
    ROLLBACK,
    ROLLED_BACK_BY_ERROR,
    PoolEvents,
)
from poolwatch.safety import FaultReporter

__all__ = [
    "ENDS",
    "TRANSACTION_END_METHODS",
    "lost_transaction",
    "rollback_cause",
    "transaction_begin",
    "transaction_end",
]

TRANSACTION_END_METHODS = ("do_commit", "do_rollback", "do_rollback_to_savepoint")
# How far up from a rollback to look for why it happened (SQLAlchemy's own frames only:
# an explicit rollback is ~6 deep, a session's close or a context's exit ~10).
_CAUSE_DEPTH = 24


def rollback_cause() -> str:
    """Why SQLAlchemy is rolling back, read from its own frames above the dialect's
    ``do_rollback`` (called from that method's wrapper).

    An exception leaving a ``with``/``async with`` block of a connection, transaction or
    session reaches the rollback through that block's ``__exit__(type_, ...)``:
    ``"error"``. (``sys.exc_info()`` would miss it on async engines, whose rollback runs
    in a greenlet of its own.) Otherwise a rollback on the way through a transaction's
    ``_do_close`` is a connection or session closing without a commit, ``"closed"``; any
    other is the application's own ``rollback()``, ``"rollback"``. One frame walk per
    rollback, never per statement.
    """
    # Frame 0 is this function, 1 the dialect method's wrapper, 2 its caller.
    frame: FrameType | None = sys._getframe(2)
    closing = False
    for _ in range(_CAUSE_DEPTH):
        if frame is None:
            break
        # By module, not file: SQLAlchemy's decorators are code compiled from strings.
        if not frame.f_globals.get("__name__", "").startswith("sqlalchemy"):
            break
        name = frame.f_code.co_name
        if name == "__exit__":
            if frame.f_locals.get("type_") is not None:
                return ROLLED_BACK_BY_ERROR
        elif name == "_do_close":
            closing = True
        frame = frame.f_back
    return CLOSED if closing else ROLLBACK


# The dialect methods that end a transaction do_begin opened (a savepoint's rollback does
# not), and how: a commit, or a rollback whose cause is read from the stack.
ENDS: dict[str, Callable[[], str]] = {
    "do_commit": lambda: COMMIT,
    "do_rollback": rollback_cause,
}


def _dbapi(connection: Any) -> int:
    """The DBAPI connection under what a dialect method is handed: the pool's proxy
    (a plain attribute of it), or a raw DBAPI connection (at first connect). The pool
    listeners are handed the same DBAPI connection."""
    return id(getattr(connection, "dbapi_connection", connection))


def transaction_begin(
    original: Callable[[Any], None],
    switch: Switch,
    events: PoolEvents,
    faults: FaultReporter,
    *,
    opened: dict[int, float],
) -> Callable[[Any], None]:
    """``do_begin``: SQLAlchemy opens a transaction on this checkout (explicitly, or
    by autobegin on a connection's first statement); ``opened`` keeps since when."""
    started, busy = events.transaction_started, events.connection_busy
    clock = perf_counter

    def begin(dbapi_connection: Any) -> None:
        if not switch._active:
            original(dbapi_connection)
            return
        try:
            opened[_dbapi(dbapi_connection)] = clock()
            started()
            busy(True)  # the BEGIN's round trip: no wait of the application's
        except Exception as err:
            faults.report(COMPONENT, err)
        try:
            original(dbapi_connection)
        finally:
            _idle_again(busy, faults)

    return begin


def transaction_end(
    original: Callable[..., Any],
    outcome: Callable[[], str] | None,
    switch: Switch,
    events: PoolEvents,
    faults: FaultReporter,
    *,
    opened: dict[int, float],
) -> Callable[..., Any]:
    """One of :data:`TRANSACTION_END_METHODS`; ``outcome`` (from :data:`ENDS`) names how
    it ends a transaction ``do_begin`` opened, ``None`` when it ends none."""
    report = faults.report

    def end(dbapi_connection: Any, *args: Any, **kwargs: Any) -> Any:
        # None: no transaction of SQLAlchemy's is open (a pool's reset on return, a
        # dialect's rollback on a raw DBAPI connection at first connect).
        since = None
        active = switch._active
        if active:
            try:
                # The round trip that follows is the connection's own work, not a wait
                # of the application's between two statements.
                events.connection_busy(True)
                if outcome is not None:
                    since = opened.pop(_dbapi(dbapi_connection), None)
            except Exception as err:
                report(COMPONENT, err)
        try:
            result = original(dbapi_connection, *args, **kwargs)
        except BaseException:
            if since is not None:  # a COMMIT that fails is rolled back by the server
                _finish(events, faults, ROLLED_BACK_BY_ERROR, since)
            raise
        finally:
            if active:
                _idle_again(events.connection_busy, faults)
            if switch._active:
                try:
                    events.transaction_ended()
                except Exception as err:
                    report(COMPONENT, err)
        if since is not None and outcome is not None:
            _finish(events, faults, outcome(), since)
        return result

    return end


def _idle_again(busy: Callable[[bool], None], faults: FaultReporter) -> None:
    """The connection's own round trip is over (whether it failed or not)."""
    try:
        busy(False)
    except Exception as err:
        faults.report(COMPONENT, err)


def lost_transaction(
    opened: dict[int, float], events: PoolEvents, faults: FaultReporter, dbapi_connection: Any
) -> None:
    """Called when a connection goes back to the pool or is thrown away: a transaction
    ``do_begin`` opened on it and nothing ended is reported as rolled back by an error."""
    since = opened.pop(id(dbapi_connection), None)
    if since is not None:  # back in the pool, or thrown away, with it still open
        _finish(events, faults, ROLLED_BACK_BY_ERROR, since)


def _finish(events: PoolEvents, faults: FaultReporter, outcome: str, since: float) -> None:
    try:
        events.transaction_finished(outcome, perf_counter() - since)
    except Exception as err:
        faults.report(COMPONENT, err)
