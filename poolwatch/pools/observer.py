"""Turns one pool's events into metric observations.

This sits on the hot path of every query and every acquire, so it keeps to dictionary
operations and pre-bound metric children: no locks of its own (single dict and set
operations are atomic under the GIL, which is what sync SQLAlchemy pools in threads
need), no string formatting, and no stack walks but where held_idle findings are
looked for: one at the checkout (the line that took the connection) and one at a release
whose code after its last statement may wait on something (see :mod:`.checkout`). Any
fault in here is reported to the :class:`~poolwatch.safety.FaultReporter` and swallowed.
"""

from __future__ import annotations

import contextvars
import itertools
from collections import deque
from collections.abc import Callable
from time import perf_counter
from typing import Any, Protocol

from poolwatch import forksafe
from poolwatch.context import NO_ROUTE, current_route, current_scope
from poolwatch.events import TRANSACTION_OUTCOMES
from poolwatch.exposition.metrics import Metrics
from poolwatch.pools.checkout import HELD_IDLE_MIN, Checkout, CodeReader, thread_usage
from poolwatch.pools.holders import Holders
from poolwatch.queries.operations import operation_of
from poolwatch.queries.recorder import QueryRecorder
from poolwatch.safety import FaultReporter

__all__ = ["HELD_IDLE_MIN", "RECLAIM_OUTCOMES", "HeldIdleSink", "PoolObserver", "is_refusal"]

# What became of a connection taken by an entry that then failed (see PoolEvents.reclaimed).
RECLAIM_OUTCOMES = ("returned", "closed", "failed")

# How a database says it has no connection slot left: asyncpg's
# TooManyConnectionsError, PostgreSQL's messages through psycopg, MySQL's error 1040.
_REFUSALS = (
    "too many clients",
    "remaining connection slots are reserved",
    "too many connections",
    "connection limit exceeded",
)


def is_refusal(exc: BaseException) -> bool:
    """Whether ``exc`` is the database refusing a new connection for lack of slots."""
    if type(exc).__name__ == "TooManyConnectionsError":
        return True
    text = str(exc).lower()
    return any(marker in text for marker in _REFUSALS)


def _is_timeout(exc: BaseException) -> bool:
    # Drivers disagree on the type: asyncio.TimeoutError (a TimeoutError since 3.11),
    # sqlalchemy.exc.TimeoutError, psycopg_pool.PoolTimeout, poolwatch's PoolTimeoutError.
    return isinstance(exc, TimeoutError) or "Timeout" in type(exc).__name__


class HeldIdleSink(Protocol):
    """Told of each checkout held across a wait (see :mod:`.checkout`)."""

    @property
    def waits(self) -> CodeReader:
        """Reads what the code between two statements waits on, for every checkout."""
        ...

    def __call__(self, checkout: Checkout, held: float, idle: float, transaction: bool) -> None:
        """A checkout held ``held`` seconds, ``idle`` of them running no statement, was
        held across a wait; called as its release is reported."""
        ...

    def call_path(self) -> str:
        """The call path of the application's line running now (a checkout's, a
        release's), called from the pool's event."""
        ...


class PoolObserver:
    """The :class:`~poolwatch.events.PoolEvents` of one named pool."""

    def __init__(
        self,
        name: str,
        metrics: Metrics,
        faults: FaultReporter,
        recorder: QueryRecorder | None = None,
        on_change: Callable[[], None] | None = None,
    ) -> None:
        self.name = name
        self._faults = faults
        self._recorder = recorder
        # Called after each acquire and release (multiprocess mode writes pool gauges).
        self._on_change = on_change
        self._tickets = itertools.count()
        # ticket -> perf_counter() at the start of the wait
        self._waiting: dict[int, float] = {}
        # holder -> the connection handed out
        self._checked_out: dict[int, Checkout] = {}
        # The checkout a task (or thread) took last from this pool: its statements add
        # their time to it. Set in the acquiring context, which the statements share
        # (a coroutine awaited in the task, SQLAlchemy's greenlets, a worker thread).
        self._taken: contextvars.ContextVar[Checkout | None] = contextvars.ContextVar(
            f"poolwatch_checkout_{name}", default=None
        )
        self._idle = metrics.connection_idle_time
        self._idle_by_route: dict[str, Any] = {}
        # Told of a checkout held across a wait (see released).
        self.on_held_idle: HeldIdleSink | None = None
        self._wait = metrics.connection_wait_time.labels(name)
        self._use = metrics.connection_use_time.labels(name)
        self._create = metrics.connection_create_time.labels(name)
        self._timeouts = metrics.connection_timeouts.labels(name)
        # Present at zero from the start: an alert on a failed give-back needs a series.
        self._reclaimed = {
            outcome: metrics.connections_reclaimed.labels(name, outcome)
            for outcome in RECLAIM_OUTCOMES
        }
        self._transactions = metrics.transactions
        self._transaction_time = metrics.transaction_duration
        # route -> ({outcome: counter child}, duration child)
        self._by_route: dict[str, tuple[dict[str, Any], Any]] = {}
        self._durations = metrics.operation_duration
        self._errors = metrics.operation_errors
        # (operation, route) -> bound histogram child; labels() costs ~1 us, a dict hit 50 ns
        self._by_label: dict[tuple[str, str], Any] = {}
        # Outcomes, read (as differences) by the autosize controller.
        self.acquired = 0
        self.timed_out = 0
        self.refused = 0
        self.opened = 0
        # Connections on their way back to the driver (see return_started).
        self.returning = 0
        # Set when something needs them (autosize; leak detection, acquire timeouts).
        self.statements: deque[tuple[int, float]] | None = None
        self.holders: Holders | None = None
        self.call_site: Callable[[], str] | None = None
        # Called as an acquire starts, where something must keep running beside the pool
        # (autosize's controller, the leak scan): it starts it again if it stopped.
        self.on_acquire: Callable[[], None] | None = None
        forksafe.forget_in_child(self)
        # The SQL dialect of its statements (see fingerprint.dialect_of), set by the adapter.
        self.dialect = ""

    def after_fork(self) -> None:
        """In a child process: the parent's checkouts and waiters are not the child's
        (see :mod:`poolwatch.forksafe`); counted on, they would stay in the drift."""
        for checkout in self._checked_out.values():
            checkout.open = False  # a context the child inherited may still point at it
        self._checked_out = {}
        self._waiting = {}
        self.returning = 0
        if self.holders is not None:
            self.holders = Holders()

    # -- read at scrape time ---------------------------------------------------------

    def pending(self) -> int:
        """Tasks or threads waiting for a connection right now."""
        return len(self._waiting)

    def checked_out(self) -> int:
        """Connections poolwatch saw handed out and not yet returned."""
        return len(self._checked_out)

    def _holding(self) -> Checkout | None:
        """The checkout the calling task (or thread) holds: the last it took, or, once
        that is back, the one it held before. Read here rather than handed back at the
        release, which may run in another context (a pool's checkin, a finaliser).

        A context that took none sends its statements on a connection taken in another
        context of its request (a FastAPI sync dependency's worker thread, where the
        session took it, and the sync endpoint's, which uses it): the checkout this
        pool handed out last in the request is the one."""
        checkout = self._taken.get()
        while checkout is not None and not checkout.open:
            checkout = checkout.outer
        if checkout is None:
            work = current_scope()
            if work is not None and work.checkouts is not None:
                checkout = work.checkouts.get(id(self))
                while checkout is not None and not checkout.open:
                    checkout = checkout.outer
        return checkout

    # -- PoolEvents ------------------------------------------------------------------

    def acquire_started(self) -> int:
        ticket = next(self._tickets)
        self._waiting[ticket] = perf_counter()
        if self.on_acquire is not None:
            try:
                self.on_acquire()
            except Exception as exc:
                self._faults.report("pool", exc)
        if self._on_change is not None:
            self._changed()
        return ticket

    def acquire_succeeded(
        self, ticket: int, holder: int, connect_seconds: float = 0.0, own: bool = False
    ) -> None:
        try:
            now = perf_counter()
            started = self._waiting.pop(ticket, None)
            work = current_scope()
            route = NO_ROUTE if work is None else work.route
            recorder = self._recorder
            # Findings are a request's (or a named scope's), like every other finding: a
            # connection taken outside any (a test fixture's session held for the whole
            # test, a script) has no route to name. A statement's own connection is held
            # by the ORM around that statement only: no gap to read, no walk, no sample.
            sink = self.on_held_idle
            finding = (
                not own
                and route != NO_ROUTE
                and sink is not None
                and recorder is not None
                and recorder.active
            )
            checkout = self._checked_out[holder] = Checkout(
                now, route, thread_usage if finding else None, self._holding()
            )
            if finding and sink is not None:
                # The line that took the connection: the code from there to the first
                # statement is read like any other gap's.
                checkout.reading(sink.waits, sink.call_path())
            self._taken.set(checkout)
            if work is not None:
                if work.checkouts is None:
                    work.checkouts = {}
                work.checkouts[id(self)] = checkout
            self.acquired += 1
            holders = self.holders
            if holders is not None:
                site = self.call_site() if self.call_site is not None else ""
                holders.taken(holder, route, site, now)
            if started is not None:
                self._wait.observe(max(0.0, now - started - connect_seconds))
            if connect_seconds > 0.0:
                self.opened += 1
                self._create.observe(connect_seconds)
        except Exception as exc:
            self._faults.report("pool", exc)
        if self._on_change is not None:
            self._changed()

    def acquire_failed(self, ticket: int, exc: BaseException) -> None:
        try:
            started = self._waiting.pop(ticket, None)
            if is_refusal(exc):
                self.refused += 1
            if _is_timeout(exc):
                self.timed_out += 1
                self._timeouts.inc()
                if started is not None:
                    self._wait.observe(perf_counter() - started)
        except Exception as err:
            self._faults.report("pool", err)
        if self._on_change is not None:
            self._changed()

    def released(self, holder: int, in_flight: float = 0.0) -> None:
        """``holder``'s connection is back. ``in_flight``: the time of a statement that
        took this connection itself and is still being timed (reported after this)."""
        try:
            checkout = self._checked_out.pop(holder, None)
            if self.holders is not None:
                self.holders.returned(holder)
            if checkout is not None:
                now = perf_counter()
                held = now - checkout.since
                self._use.observe(held)
                idle = max(0.0, held - checkout.statements - in_flight)
                checkout.open = False
                checkout.owed = in_flight > 0.0
                sink = self.on_held_idle
                if checkout.cpu is not None and sink is not None:
                    checkout.ended(now - in_flight, sink.call_path)
                    if checkout.held_idle(held, idle):
                        sink(checkout, held, idle, checkout.transaction)
                child = self._idle_by_route.get(checkout.route)
                if child is None:
                    child = self._idle_by_route[checkout.route] = self._idle.labels(
                        self.name, checkout.route
                    )
                child.observe(idle)
        except Exception as exc:
            self._faults.report("pool", exc)
        if self._on_change is not None:
            self._changed()

    def return_started(self) -> None:
        self.returning += 1

    def return_finished(self) -> None:
        self.returning -= 1
        if self._on_change is not None:
            self._changed()

    def reclaimed(self, outcome: str) -> None:
        try:
            self._reclaimed[outcome].inc()
        except Exception as exc:
            self._faults.report("pool", exc)

    def _changed(self) -> None:
        try:
            if self._on_change is not None:
                self._on_change()
        except Exception as exc:
            self._faults.report("pool", exc)

    def connection_created(self, seconds: float) -> None:
        try:
            self.opened += 1
            self._create.observe(seconds)
        except Exception as exc:
            self._faults.report("pool", exc)

    def statement_started(self) -> None:
        try:
            checkout = self._holding()
            if checkout is not None and checkout.cpu is not None:
                checkout.starting()
        except Exception as exc:
            self._faults.report("query", exc)

    def query(
        self, sql: str, seconds: float, failed: bool, params: Any = None, continues: bool = False
    ) -> None:
        try:
            work = current_scope()
            trace_id = None
            if work is None:
                route = NO_ROUTE
            else:
                route = work.route
                work.queries += 1
                trace_id = work.trace_id
            key = (operation_of(sql), route)
            child = self._by_label.get(key)
            if child is None:
                child = self._by_label[key] = self._durations.labels(self.name, *key)
                # The error counter exists at zero beside it: error ratios and alerts
                # need a denominator before the first error.
                self._errors.labels(self.name, *key)
            child.observe(seconds, trace_id)
            statements = self.statements
            if statements is not None and not failed:
                statements.append((hash(sql), seconds))  # a deque with maxlen: the latest
            if failed:
                self._errors.labels(self.name, *key).inc()
        except Exception as exc:
            self._faults.report("query", exc)
            return
        path = ""
        recorder = self._recorder
        if recorder is not None and recorder.active and not continues:
            try:
                path = recorder.record(
                    work, sql, seconds, failed, params, pool=self.name, dialect=self.dialect
                )
            except Exception as exc:
                self._faults.report("detection", exc)
        try:
            checkout = self._taken.get()
            if checkout is not None and checkout.owed:
                checkout.owed = False  # its own statement, after its release: counted there
            else:
                checkout = self._holding()
                if checkout is not None:
                    checkout.ran(seconds, path)
        except Exception as exc:
            self._faults.report("query", exc)

    def transaction_started(self) -> None:
        try:
            checkout = self._holding()
            if checkout is not None:
                checkout.transaction = True
        except Exception as exc:
            self._faults.report("pool", exc)

    def transaction_finished(self, outcome: str, seconds: float) -> None:
        try:
            route = current_route()
            children = self._by_route.get(route)
            if children is None:
                # Every outcome at zero beside the first: a rollback ratio needs them all.
                children = self._by_route[route] = (
                    {
                        name: self._transactions.labels(self.name, route, name)
                        for name in TRANSACTION_OUTCOMES
                    },
                    self._transaction_time.labels(self.name, route),
                )
            children[0][outcome].inc()
            children[1].observe(seconds)
        except Exception as exc:
            self._faults.report("pool", exc)

    def connection_busy(self, busy: bool) -> None:
        try:
            checkout = self._holding()
            if checkout is not None:
                checkout.busy(busy)
        except Exception as exc:
            self._faults.report("pool", exc)

    def transaction_ended(self) -> None:
        recorder = self._recorder
        if recorder is not None and recorder.active:
            try:
                recorder.transaction_ended(current_scope(), self.name)
            except Exception as exc:
                self._faults.report("detection", exc)
