"""Statements: the engine's dialect *instance* gets its own ``do_execute``,
``do_executemany`` and ``do_execute_no_params``, thin timers around the class's methods
(removed on uninstall).

Every statement a ``Connection`` sends goes through one of them, once: an ``executemany``
is one call and so one query; transaction control (``BEGIN``/``COMMIT``, which drivers
send themselves) is not a statement (see :mod:`.transactions`). Cost per
``conn.execute(select(t).where(t.c.id == 1)).all()``, SQLite in memory, SQLAlchemy 2.1.9,
CPython 3.11, best of 3 x 7 x 20000 (a timeit script, not a test):

================================================  ============  =================
hook                                               no-op sink    with PoolObserver
================================================  ============  =================
none (baseline)                                    12.1 us       12.1 us
before/after_cursor_execute + handle_error events  17.5 (+5.5)   18.9 (+6.8)
bare ``do_execute`` wrapper                        12.4 (+0.4)   13.7 (+1.6)
this module, as installed                          12.7 (+0.7)   13.8 (+1.8)
================================================  ============  =================

Engine events cost more than their listeners: any ``ConnectionEvents`` listener switches
every ``Connection`` onto its event-dispatching path (an ``engine_disposed`` listener alone
adds ~3.5 us per statement), so none is used here.
"""

from __future__ import annotations

from collections.abc import Callable
from time import perf_counter
from typing import Any

import sqlalchemy

from poolwatch.adapters.sqlalchemy.hooks import COMPONENT, Switch
from poolwatch.events import PoolEvents
from poolwatch.safety import FaultReporter

__all__ = ["EXECUTE_METHODS", "timed_statement"]

EXECUTE_METHODS = ("do_execute", "do_executemany", "do_execute_no_params")
_INSERTMANYVALUES = getattr(
    getattr(sqlalchemy.engine.interfaces, "ExecuteStyle", None), "INSERTMANYVALUES", None
)


def _continues_batch(args: tuple[Any, ...]) -> bool:
    """Whether this ``do_execute`` is a second or later part of one ``executemany``.

    SQLAlchemy's "insertmanyvalues" splits an ORM flush of many rows into batched INSERTs,
    and into one INSERT per row where RETURNING must come back in order and the dialect
    cannot promise it (SQLite). The application issued one statement: its later parts are
    timed and counted, not grouped again by N+1 detection. The first part marks the
    execution context, which lives exactly as long as that one executemany.
    """
    context = args[1] if len(args) > 1 else None
    if _INSERTMANYVALUES is None or getattr(context, "execute_style", None) is not (
        _INSERTMANYVALUES
    ):
        return False
    state = vars(context)
    seen = "_poolwatch_batch" in state
    state["_poolwatch_batch"] = True
    return seen


def timed_statement(
    original: Callable[..., Any],
    has_params: bool,
    switch: Switch,
    events: PoolEvents,
    faults: FaultReporter,
) -> Callable[..., Any]:
    """One of :data:`EXECUTE_METHODS`: ``original`` timed and reported as a query
    (``has_params``: the method is handed the statement's parameters)."""
    query = events.query
    starting = events.statement_started
    report = faults.report
    clock = perf_counter

    def execute(cursor: Any, statement: str, *args: Any, **kwargs: Any) -> Any:
        if not switch._active:
            return original(cursor, statement, *args, **kwargs)
        try:
            starting()
        except Exception as err:
            report(COMPONENT, err)
        started = clock()
        try:
            result = original(cursor, statement, *args, **kwargs)
        except BaseException as exc:
            elapsed = clock() - started
            try:
                # A cancelled statement is not a database error; its time is real.
                params = args[0] if has_params and args else None
                more = has_params and _continues_batch(args)
                query(statement, elapsed, isinstance(exc, Exception), params, more)
            except Exception as err:
                report(COMPONENT, err)
            raise
        elapsed = clock() - started
        try:
            params = args[0] if has_params and args else None
            query(statement, elapsed, False, params, has_params and _continues_batch(args))
        except Exception as err:
            report(COMPONENT, err)
        return result

    return execute
