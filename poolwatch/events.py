"""The interface between adapters and the rest of poolwatch.

An adapter (Tortoise, SQLAlchemy) knows how to see what a pool and its connections do; it
reports that to a :class:`PoolEvents` it is given, and offers a :class:`PoolProbe` that
reads the pool's own counters at scrape time. Neither side knows about Prometheus.
"""

from __future__ import annotations

import dataclasses
from typing import Any, NamedTuple, Protocol

__all__ = [
    "BULK_WRITE",
    "CLOSED",
    "COMMIT",
    "DUPLICATE",
    "FINDING_KINDS",
    "HELD_IDLE",
    "NPLUSONE",
    "ROLLBACK",
    "ROLLED_BACK_BY_ERROR",
    "SLOW_QUERY",
    "TRANSACTION_OUTCOMES",
    "UNUSED_EAGER_LOAD",
    "Finding",
    "PoolEvents",
    "PoolProbe",
    "PoolState",
    "QueryEvent",
]

NPLUSONE = "nplusone"
DUPLICATE = "duplicate"
SLOW_QUERY = "slow_query"
BULK_WRITE = "bulk_write"
HELD_IDLE = "held_idle"
UNUSED_EAGER_LOAD = "unused_eager_load"
# Every kind of Finding (its ``kind``); poolwatch.queries.kinds describes each.
FINDING_KINDS = (NPLUSONE, DUPLICATE, SLOW_QUERY, BULK_WRITE, HELD_IDLE, UNUSED_EAGER_LOAD)

# How a transaction ended (the ``outcome`` of PoolEvents.transaction_finished).
COMMIT = "commit"
ROLLBACK = "rollback"  # the application rolled back
ROLLED_BACK_BY_ERROR = "error"  # an exception left its block, or its COMMIT failed
CLOSED = "closed"  # its connection or session closed without a commit
TRANSACTION_OUTCOMES = (COMMIT, ROLLBACK, ROLLED_BACK_BY_ERROR, CLOSED)


class PoolState(NamedTuple):
    """What a pool reports about itself right now.

    ``used`` / ``idle`` are ``None`` where the driver cannot tell (poolwatch then counts
    its own checkouts); ``max`` is ``None`` for pools without a limit (``NullPool``).
    """

    used: int | None
    idle: int | None
    max: int | None


class PoolProbe(Protocol):
    """Reads a pool's own counters. Called at scrape time, never on the hot path."""

    def __call__(self) -> PoolState | None:
        """The pool's state, or ``None`` when the pool does not exist (yet)."""
        ...


class PoolEvents(Protocol):
    """What adapters report, per pool. Implementations never raise."""

    name: str
    dialect: str
    """The SQL dialect of the pool's statements (``fingerprint.dialect_of``), for telling
    values from names; the adapter sets it."""

    def acquire_started(self) -> int:
        """A task starts waiting for a connection; returns a ticket for the outcome."""
        ...

    def acquire_succeeded(
        self, ticket: int, holder: int, connect_seconds: float = 0.0, own: bool = False
    ) -> None:
        """The waiter got a connection; ``holder`` identifies this checkout until release.

        ``connect_seconds`` is the part of the acquire spent opening a new connection: it
        is reported as creation time, and left out of the wait time. ``own``: the
        statement being sent took the connection itself and gives it back as it ends (a
        Tortoise ``execute_query`` outside a transaction): no application code runs while
        it is held, so it is never held idle.
        """
        ...

    def acquire_failed(self, ticket: int, exc: BaseException) -> None:
        """The waiter gave up: timeout, cancellation or a connection error."""
        ...

    def released(self, holder: int, in_flight: float = 0.0) -> None:
        """The checkout ``holder`` went back to the pool (or was discarded).

        ``in_flight``: where a statement took the connection itself and is reported only
        after its release (a Tortoise ``execute_query`` outside a transaction), its time
        so far, so that it does not count as the connection held while idle.
        """
        ...

    def connection_created(self, seconds: float) -> None:
        """A new database connection took ``seconds`` to open."""
        ...

    def return_started(self) -> None:
        """A connection is on its way back to the driver's pool (released: called just
        before ``released``, so that the gauges read then show no drift; or given back
        by poolwatch after a failed entry); the driver still counts it used."""
        ...

    def return_finished(self) -> None:
        """A connection that ``return_started`` announced is back with the driver."""
        ...

    def reclaimed(self, outcome: str) -> None:
        """A connection taken by an acquire that then failed (cancelled, timed out) was
        given back by poolwatch: ``outcome`` is ``"returned"``, ``"closed"`` (closed
        first, its slot back in the pool) or ``"failed"`` if giving it back raised."""
        ...

    def connection_busy(self, busy: bool) -> None:
        """The connection the calling task (or thread) holds starts (``busy``) or ends a
        round trip of its own that is no statement: a BEGIN, a COMMIT or ROLLBACK, the
        pool's reset on return. Its time is no wait of the application's."""
        ...

    def transaction_ended(self) -> None:
        """The driver committed or rolled back without a statement poolwatch saw (a
        DBAPI ``commit()``, a transaction's exit): later reads may see other rows."""
        ...

    def transaction_started(self) -> None:
        """The calling task (or thread) began a transaction on the connection it holds
        (a held_idle finding on that checkout says it was inside one)."""
        ...

    def transaction_finished(self, outcome: str, seconds: float) -> None:
        """A transaction of the calling task (or thread) ended ``seconds`` after its
        BEGIN; ``outcome`` is one of ``TRANSACTION_OUTCOMES``. Savepoints inside it are
        not transactions of their own."""
        ...

    def statement_started(self) -> None:
        """The calling task (or thread) is about to send a statement on the connection
        it holds (``query`` follows once it is over)."""
        ...

    def query(
        self, sql: str, seconds: float, failed: bool, params: Any = None, continues: bool = False
    ) -> None:
        """One statement ran.

        ``params`` are the statement's parameters, used only to tell an exact repeat from
        a loop: they are hashed, never stored, logged or exported. ``continues`` marks a
        later part of one statement the driver sent in pieces (a batched executemany):
        it is timed and counted, but is not a statement of the application's own.
        """
        ...


class QueryEvent(NamedTuple):
    """One statement as N+1 detection and :func:`poolwatch.testing.capture` see it.

    It holds no parameter values: ``identity`` is a hash of the SQL text, its parameters
    and its pool, only good for telling whether two statements were exactly the same.
    """

    fingerprint: str
    operation: str
    call_site: str
    seconds: float
    failed: bool
    pool: str
    route: str
    in_list: int
    identity: int | None
    call_path: str = ""
    """The application frames that issued it, outermost first (``call_site`` is the last)."""
    by_relation: bool = False
    """An ORM's relation loader ran it (a lazy load, ``fetch_related``)."""
    relation: str = ""
    """The relation that loader loaded, ``Model.attribute``, where the ORM names it."""
    orm_call: str = ""
    """The ORM operation that ran it as part of one call (``Session.merge``,
    ``Session.flush``), if one did."""
    serialized: bool = False
    """The response's serialization ran it after the endpoint returned (a
    ``response_model`` reading a relation): the call path is the endpoint's."""

    @property
    def path(self) -> str:
        """The call path, or the call site where no path was recorded."""
        return self.call_path or self.call_site

    def __str__(self) -> str:
        return f"{self.fingerprint}  [{self.path}]"


@dataclasses.dataclass(frozen=True, slots=True)
class Finding:
    """Something to fix in how a request uses the database.

    ``kind`` is ``"nplusone"`` (one query per row of an earlier result), ``"duplicate"``
    (the very same query and parameters again), ``"slow_query"``, ``"bulk_write"``
    (one INSERT/UPDATE/DELETE per row where one batched statement would do),
    ``"unused_eager_load"`` (an eager load of ``relations`` that nothing read, ``count``
    times; ``fingerprint`` is the query's, ``call_path`` where the app issued it) or
    ``"held_idle"`` (one checkout held ``held`` seconds, ``duration`` of them running no
    statement; the longest gap was after ``before`` and until ``call_path``, either of
    them empty for the checkout or the release; ``transaction``: inside one).
    ``duration`` is the total time of the ``count`` statements, in seconds. ``method``
    is the request's HTTP method (empty outside a request): a ``GET`` and a ``POST`` of
    one route are two places to look. ``call_path`` is the application's frames that ran
    the statements, outermost first, so the loop line is in it; ``call_site`` is its
    innermost frame.
    """

    kind: str
    route: str
    fingerprint: str
    count: int
    duration: float
    call_site: str
    suggestion: str
    pool: str
    method: str = ""
    call_path: str = ""
    held: float = 0.0
    before: str = ""
    transaction: bool = False
    callers: tuple[str, ...] = ()
    """Every distinct call path that ran the statements, when more than one did (a
    duplicate repeated by the endpoint and by a helper it calls); ``call_path`` is the
    first."""
    relations: tuple[str, ...] = ()
    """The ORM relations involved, as ``Model.attribute``: the chain an N+1 walked
    (``Article.author``, ``Author.profile``), or the eager loads nothing read."""
    waited_on: str = ""
    """held_idle: what the connection waited on, as the code between the two statements
    names it (``verify_password, run in the thread pool by run_in_threadpool``, ``a
    network call, httpx.AsyncClient.get``, ``a sleep, asyncio.sleep``; ``(on some paths
    only)`` after a wait in a branch); empty where the code could not be read and the
    wait was measured."""

    @property
    def path(self) -> str:
        """The call path, or the call site where no path was recorded."""
        return self.call_path or self.call_site

    @property
    def gap(self) -> str:
        """held_idle: the gap it names, in words: ``waiting on verify_password, run in
        the thread pool by run_in_threadpool, between app/auth.py:20 in login and
        app/auth.py:24 in login``."""
        between = f"between {self.before or 'the checkout'} and {self.path or 'the release'}"
        if self.waited_on:
            return f"waiting on {self.waited_on}, {between}"
        return f"longest {between}, a wait measured (the code between was not read)"

    @property
    def where(self) -> str:
        """``GET /api/articles`` for a request, the route (or scope name) otherwise."""
        return f"{self.method} {self.route}" if self.method else self.route

    def __str__(self) -> str:
        if self.kind == HELD_IDLE:
            return (
                f"held_idle on {self.where}: a connection of pool {self.pool} held "
                f"{self.held * 1000:.0f} ms, {self.duration * 1000:.0f} ms of it running no "
                f"statement (statements: {(self.held - self.duration) * 1000:.0f} ms)"
                f"{' inside a transaction' if self.transaction else ''}, {self.gap}. "
                f"{self.suggestion}"
            )
        if self.kind == UNUSED_EAGER_LOAD:
            return (
                f"unused_eager_load on {self.where}: {', '.join(self.relations)} loaded "
                f"{self.count} x and never read, at {self.path}. {self.suggestion}"
            )
        if len(self.relations) > 1 and self.kind == NPLUSONE:  # one loop down a chain
            what = (
                f"{self.count} queries along {' -> '.join(self.relations)}, the first "
                f"{self.fingerprint!r}"
            )
        else:
            what = f"{self.count} x {self.fingerprint!r}"
        callers = f" (also from {'; '.join(self.callers[1:])})" if self.callers else ""
        return (
            f"{self.kind} on {self.where}: {what} ({self.duration * 1000:.1f} ms) at "
            f"{self.path}{callers}. {self.suggestion}"
        )

    def to_dict(self) -> dict[str, Any]:
        """The finding as JSON-ready values (``callers`` and ``relations`` as lists, as
        JSON gives them back)."""
        values = dataclasses.asdict(self)
        return {key: list(v) if isinstance(v, tuple) else v for key, v in values.items()}
