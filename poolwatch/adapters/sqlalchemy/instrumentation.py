"""SQLAlchemy adapter: the checkouts, new connections and statements of one engine.

Each thing is observed at one seam, chosen for being cheap and, where SQLAlchemy offers
one, public:

* **Statements**: the engine's dialect *instance* gets its own ``do_execute``,
  ``do_executemany`` and ``do_execute_no_params``, thin timers around the class's
  methods (removed on uninstall). Every statement a ``Connection`` sends goes through one
  of them, once: an ``executemany`` is one call and so one query; transaction control
  (``BEGIN``/``COMMIT``, which drivers send themselves) is not a statement. Cost per
  ``conn.execute(select(t).where(t.c.id == 1)).all()``, SQLite in memory, SQLAlchemy
  2.1.9, CPython 3.11, best of 3 x 7 x 20000 (a timeit script, not a test):

  ================================================  ============  =================
  hook                                               no-op sink    with PoolObserver
  ================================================  ============  =================
  none (baseline)                                    12.1 us       12.1 us
  before/after_cursor_execute + handle_error events  17.5 (+5.5)   18.9 (+6.8)
  bare ``do_execute`` wrapper                        12.4 (+0.4)   13.7 (+1.6)
  this module, as installed                          12.7 (+0.7)   13.8 (+1.8)
  ================================================  ============  =================

  Engine events cost more than their listeners: any ``ConnectionEvents`` listener
  switches every ``Connection`` onto its event-dispatching path (an ``engine_disposed``
  listener alone adds ~3.5 us per statement), so none is used here.
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

Gauges are read from the pool itself at scrape time by :func:`read_pool_state`. That and
:meth:`SQLAlchemyInstrumentation._hook_pool` are the only places touching SQLAlchemy's
private attributes.
"""

from __future__ import annotations

import contextvars
import logging
import sys
import weakref
from collections.abc import Callable
from time import perf_counter
from types import FrameType
from typing import TYPE_CHECKING, Any, ClassVar, NamedTuple

import sqlalchemy
from sqlalchemy import event
from sqlalchemy.engine import Dialect, Engine
from sqlalchemy.pool import (
    ConnectionPoolEntry,
    NullPool,
    Pool,
    PoolProxiedConnection,
    QueuePool,
    SingletonThreadPool,
    StaticPool,
)

from poolwatch import forksafe
from poolwatch.adapters import major_minor
from poolwatch.adapters.timing import ConnectTime
from poolwatch.errors import PoolWatchError
from poolwatch.events import (
    CLOSED,
    COMMIT,
    ROLLBACK,
    ROLLED_BACK_BY_ERROR,
    PoolEvents,
    PoolState,
)
from poolwatch.queries.fingerprint import dialect_of
from poolwatch.safety import FaultReporter
from poolwatch.sizing.appname import tag_server_settings, tagged_name
from poolwatch.sizing.budget import POSTGRES_LIMITS_SQL, ServerLimits
from poolwatch.sizing.gate import Gate

if TYPE_CHECKING:
    from sqlalchemy.ext.asyncio import AsyncEngine

__all__ = [
    "SQLAlchemyInstrumentation",
    "pool_capacity",
    "postgres_limits_reader",
    "read_pool_state",
]

logger = logging.getLogger("poolwatch")

SUPPORTED = ((2, 0), (2, 2))  # [from, to): the versions whose internals this was tested on

_EXECUTE_METHODS = ("do_execute", "do_executemany", "do_execute_no_params")
_TRANSACTION_END_METHODS = ("do_commit", "do_rollback", "do_rollback_to_savepoint")
# How far up from a rollback to look for why it happened (SQLAlchemy's own frames only:
# an explicit rollback is ~6 deep, a session's close or a context's exit ~10).
_CAUSE_DEPTH = 24
_CONNECT_STARTED = "poolwatch.connect_started"  # key in a pool entry's ``info`` dict
_COMPONENT = "sqlalchemy"
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


_MISSING = object()


_acquire: contextvars.ContextVar[ConnectTime | None] = contextvars.ContextVar(
    "poolwatch_sqlalchemy_acquire", default=None
)


class _Shadow(NamedTuple):
    """An instance attribute poolwatch set, and what to put back."""

    target: weakref.ref[Any]
    name: str
    # Not the wrapper itself: it closes over the target, and holding it would keep every
    # pool that Engine.dispose() retired alive. While the target lives, its __dict__
    # holds the wrapper, so the id cannot be reused.
    replacement_id: int
    previous: Any  # _MISSING when the class attribute showed through


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
_ENDS: dict[str, Callable[[], str]] = {
    "do_commit": lambda: COMMIT,
    "do_rollback": rollback_cause,
}


def _holder(connection: PoolProxiedConnection) -> int:
    """A checkout's name: its pool entry's ``record_info``, which the pool listeners see
    too, or the proxied connection itself where it has no entry."""
    info = connection.record_info
    return id(connection) if info is None else id(info)


def _dbapi(connection: Any) -> int:
    """The DBAPI connection under what a dialect method is handed: the pool's proxy
    (a plain attribute of it), or a raw DBAPI connection (at first connect). The pool
    listeners are handed the same DBAPI connection."""
    return id(getattr(connection, "dbapi_connection", connection))


def sqlalchemy_version() -> tuple[int, int]:
    """SQLAlchemy's ``(major, minor)``."""
    return major_minor(sqlalchemy.__version__)


def _enter(gate: Gate) -> bool:
    """Take a permit: from a thread, or from SQLAlchemy's asyncio greenlet."""
    from poolwatch.sizing.limiter import AsyncLimiter

    if isinstance(gate.limiter, AsyncLimiter):
        # AsyncEngine runs the pool inside a greenlet that may await on the loop.
        from sqlalchemy.util import await_only

        taken: bool = await_only(gate.enter())
        return taken
    return gate.enter_blocking()


def pool_capacity(pool: object) -> tuple[bool, int | None]:
    """Whether autosize can drive ``pool`` (a QueuePool), and its hard ceiling."""
    if not isinstance(pool, QueuePool):
        return False, None
    state = read_pool_state(pool)
    return True, None if state is None else state.max


def postgres_limits_reader(
    engine: Engine | AsyncEngine,
) -> Callable[[], Any] | None:
    """A reader of the server's connection limits, for engines on PostgreSQL."""
    sync_engine = engine if isinstance(engine, Engine) else engine.sync_engine
    if sync_engine.dialect.name != "postgresql":
        return None
    from sqlalchemy import text

    if not isinstance(engine, Engine):
        async_engine = engine

        async def read_async() -> ServerLimits:
            async with async_engine.connect() as connection:
                row = (await connection.execute(text(POSTGRES_LIMITS_SQL))).one()
            return ServerLimits.from_row(tuple(row))

        return read_async

    def read_sync() -> ServerLimits:
        with sync_engine.connect() as connection:
            row = connection.execute(text(POSTGRES_LIMITS_SQL)).one()
        return ServerLimits.from_row(tuple(row))

    async def read_in_thread() -> ServerLimits:
        import asyncio

        return await asyncio.to_thread(read_sync)

    return read_in_thread


# The PostgreSQL drivers whose connect() takes application_name as a keyword (libpq's
# and pg8000's), and asyncpg, which takes it among its server_settings.
_APPLICATION_NAME_KEYWORD = frozenset(
    {"psycopg", "psycopg_async", "psycopg2", "psycopg2cffi", "pg8000"}
)


def taggable(engine: Engine | AsyncEngine) -> bool:
    """Whether the connections of ``engine`` (on PostgreSQL) can carry a tag."""
    sync_engine = engine if isinstance(engine, Engine) else engine.sync_engine
    dialect = sync_engine.dialect
    return dialect.name == "postgresql" and (
        dialect.driver == "asyncpg" or dialect.driver in _APPLICATION_NAME_KEYWORD
    )


def tag_parameters(driver: str, cparams: dict[str, Any], tag: str) -> None:
    """Put ``tag`` at the end of the application_name in a driver's connect() keywords."""
    if driver == "asyncpg":
        tag_server_settings(cparams, tag)
    elif driver in _APPLICATION_NAME_KEYWORD:
        cparams["application_name"] = tagged_name(tag, cparams.get("application_name"))


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


def _no_connection() -> Any:
    raise PoolWatchError("poolwatch's anchor pool holds listeners, never connections")


class SQLAlchemyInstrumentation:
    """Hooks one ``Engine`` or ``AsyncEngine``; reports to one :class:`PoolEvents`.

    ::

        instrumentation = SQLAlchemyInstrumentation(engine, events, faults)
        instrumentation.install()
        state = instrumentation.probe()   # at scrape time
        instrumentation.uninstall()

    An engine (its dialect and pools) can be instrumented by one instrumentation at a
    time; :meth:`install` raises :class:`~poolwatch.errors.PoolWatchError` otherwise.
    """

    # dialect or pool -> the instrumentation that hooked it
    _owners: ClassVar[weakref.WeakKeyDictionary[Any, SQLAlchemyInstrumentation]] = (
        weakref.WeakKeyDictionary()
    )

    def __init__(
        self,
        engine: Engine | AsyncEngine,
        events: PoolEvents,
        faults: FaultReporter,
        gate: Gate | None = None,
        tag: str | None = None,
    ) -> None:
        sync_engine = getattr(engine, "sync_engine", engine)
        if not isinstance(sync_engine, Engine):
            raise TypeError(
                "instrument_sqlalchemy() needs a SQLAlchemy Engine or AsyncEngine, "
                f"got {type(engine).__name__}"
            )
        self._engine = sync_engine
        self._events = events
        self._faults = faults
        # Autosize's limiter and the acquire timeout, set before install; see _gated.
        self.gate = gate
        # The application_name tag of the engine's new connections (autosize's budget).
        self.tag = tag
        # Checkouts holding a permit of the gate's limiter (their record_info ids).
        self._permits: set[int] = set()
        # DBAPI connections (their ids) with a transaction open (do_begin), since when.
        self._opened: dict[int, float] = {}
        # Connections being opened right now (the creator called, not yet returned).
        self.connecting = 0
        self._active = False
        self._shadows: list[_Shadow] = []
        # The pool listeners are registered on this empty pool of ours and copied into
        # the engine's; see _hook_pool.
        self._anchor: Pool | None = None
        forksafe.forget_in_child(self)

    def after_fork(self) -> None:
        """In a child process: the parent's checkouts and transactions are not the
        child's (see :mod:`poolwatch.forksafe`)."""
        self._permits = set()
        self._opened = {}

    # -- install / uninstall -------------------------------------------------------------

    def install(self) -> None:
        """Hook the engine. Raises if it is already instrumented."""
        engine = self._engine
        dialect, pool = engine.dialect, engine.pool
        for target in (dialect, pool):
            owner = self._owners.get(target)
            if owner is not None:
                raise PoolWatchError(
                    f"{engine!r} is already instrumented by poolwatch as "
                    f"pool={owner._events.name!r}; call uninstrument() on that PoolWatch "
                    "first"
                )
        version = sqlalchemy_version()
        if not SUPPORTED[0] <= version < SUPPORTED[1]:
            logger.warning(
                "poolwatch was tested with SQLAlchemy %d.%d to %d.%d, found %d.%d: "
                "pool metrics may be incomplete",
                *SUPPORTED[0],
                SUPPORTED[1][0],
                SUPPORTED[1][1] - 1,
                *version,
            )
        self._active = True
        try:
            self._owners[dialect] = self
            self._anchor = NullPool(_no_connection)
            for name, listener in self._pool_listeners():
                event.listen(self._anchor, name, listener)
            for method in _EXECUTE_METHODS:
                self._shadow(
                    dialect,
                    method,
                    self._timed_statement(
                        getattr(dialect, method), method != "do_execute_no_params"
                    ),
                )
            # A commit or rollback is a DBAPI call, no statement: duplicates end there,
            # and so do the transactions that do_begin opened.
            self._shadow(dialect, "do_begin", self._transaction_begin(dialect.do_begin))
            for method in _TRANSACTION_END_METHODS:
                self._shadow(
                    dialect,
                    method,
                    self._transaction_end(getattr(dialect, method), _ENDS.get(method)),
                )
            self._events.dialect = dialect_of(dialect.name)
            if self.tag is not None:
                event.listen(engine, "do_connect", self._tag_connection)
            self._hook_pool(pool, adopt_listeners=True)
        except BaseException:
            self.uninstall()
            raise

    def uninstall(self) -> None:
        """Remove every listener and wrapper this instrumentation added."""
        self._active = False  # a wrapper someone else wrapped stays, as a pass-through
        for shadow in reversed(self._shadows):
            target = shadow.target()
            if target is None:
                continue
            if id(vars(target).get(shadow.name)) != shadow.replacement_id:
                continue
            if shadow.previous is _MISSING:
                delattr(target, shadow.name)
            else:
                setattr(target, shadow.name, shadow.previous)
        self._shadows.clear()
        if event.contains(self._engine, "do_connect", self._tag_connection):
            event.remove(self._engine, "do_connect", self._tag_connection)
        anchor, self._anchor = self._anchor, None
        if anchor is not None:  # removes the copies in every pool too
            for name, listener in self._pool_listeners():
                if event.contains(anchor, name, listener):
                    event.remove(anchor, name, listener)
        for target, owner in list(self._owners.items()):
            if owner is self:
                self._owners.pop(target, None)

    def probe(self) -> PoolState | None:
        """The engine's current pool, read now (see :func:`read_pool_state`)."""
        return read_pool_state(self._engine.pool)

    def open_connections(self) -> int:
        """Connections the engine's pool holds open on the server, used or idle: the
        pool's own count less those still being opened, which the server does not show
        yet (the database budget compares this with the server's sessions)."""
        state = self.probe()
        if state is None:
            return 0
        return max(0, (state.used or 0) + (state.idle or 0) - self.connecting)

    def _tag_connection(
        self, dialect: Dialect, record: object, cargs: object, cparams: dict[str, Any]
    ) -> None:
        """SQLAlchemy's ``do_connect`` event: the new connection carries the tag."""
        if self.tag is None:
            return
        try:
            tag_parameters(str(dialect.driver), cparams, self.tag)
        except Exception as exc:  # connecting untagged only costs the budget its peers
            self._faults.report("autosize", exc)

    def _pool_listeners(self) -> tuple[tuple[str, Callable[..., None]], ...]:
        return (
            ("connect", self._on_connect),
            ("checkin", self._on_release),
            ("detach", self._on_detach),
            ("invalidate", self._on_invalidate),
        )

    def _hook_pool(self, pool: Pool, *, adopt_listeners: bool = False) -> None:
        """Shadow the pool's ``connect``, ``recreate`` and ``_invoke_creator``.

        The one method touching SQLAlchemy's private attributes, tested on 2.0 and 2.1
        (see ``SUPPORTED``):

        * ``_invoke_creator`` is the one call every new connection goes through, whatever
          creator the engine was given. The public alternative, the ``do_connect`` event,
          misses engines built with ``creator=`` or ``pool=``, and costs every statement
          ~0.3 us by switching on the dialect's event dispatch. Should the attribute go
          away, creation time is folded into wait time rather than failing.
        * ``dispatch._update`` is how ``Pool.recreate()`` carries listeners into the new
          pool, keyed to the pool they were registered on. Registered on an anchor pool
          of ours and copied in the same way, they can all be removed at uninstall, from
          every pool ``dispose()`` made, without keeping a retired pool (and the
          connections returned to it) alive.
        """
        if adopt_listeners and self._anchor is not None:
            pool.dispatch._update(self._anchor.dispatch, only_propagate=False)
        self._owners[pool] = self
        self._shadow(pool, "connect", self._timed_acquire(pool.connect))
        self._shadow(pool, "recreate", self._following_recreate(pool.recreate))
        # With a limiter, a permit goes back once the connection is back in the queue
        # (after the pool's own _do_return_conn), so the pool never holds more than the
        # limit; a connection returning to a pool above its limit is closed instead,
        # the way QueuePool itself drops one that finds its queue full.
        if self.gate is not None and self.gate.limiter is not None:
            self._shadow(pool, "_do_return_conn", self._returning(pool, pool._do_return_conn))
        creator = vars(pool).get("_invoke_creator")
        if callable(creator):
            self._shadow(pool, "_invoke_creator", self._marking_creator(creator))

    def _shadow(self, target: Dialect | Pool, name: str, replacement: Callable[..., Any]) -> None:
        self._shadows = [s for s in self._shadows if s.target() is not None]
        previous = vars(target).get(name, _MISSING)
        setattr(target, name, replacement)
        self._shadows.append(_Shadow(weakref.ref(target), name, id(replacement), previous))

    # -- wrappers (hot path) -------------------------------------------------------------

    def _transaction_begin(self, original: Callable[[Any], None]) -> Callable[[Any], None]:
        """``do_begin``: SQLAlchemy opens a transaction on this checkout (explicitly, or
        by autobegin on a connection's first statement)."""
        opened = self._opened
        started = self._events.transaction_started
        clock = perf_counter

        def begin(dbapi_connection: Any) -> None:
            if self._active:
                try:
                    opened[_dbapi(dbapi_connection)] = clock()
                    started()
                except Exception as err:
                    self._faults.report(_COMPONENT, err)
            original(dbapi_connection)

        return begin

    def _transaction_end(
        self, original: Callable[..., Any], outcome: Callable[[], str] | None
    ) -> Callable[..., Any]:
        events = self._events
        report = self._faults.report
        opened = self._opened

        def end(dbapi_connection: Any, *args: Any, **kwargs: Any) -> Any:
            # None: no transaction of SQLAlchemy's is open (a pool's reset on return, a
            # dialect's rollback on a raw DBAPI connection at first connect).
            since = None
            if self._active and outcome is not None:
                try:
                    since = opened.pop(_dbapi(dbapi_connection), None)
                except Exception as err:
                    report(_COMPONENT, err)
            try:
                result = original(dbapi_connection, *args, **kwargs)
            except BaseException:
                if since is not None:  # a COMMIT that fails is rolled back by the server
                    self._finish(ROLLED_BACK_BY_ERROR, since)
                raise
            finally:
                if self._active:
                    try:
                        events.transaction_ended()
                    except Exception as err:
                        report(_COMPONENT, err)
            if since is not None and outcome is not None:
                self._finish(outcome(), since)
            return result

        return end

    def _finish(self, outcome: str, since: float) -> None:
        try:
            self._events.transaction_finished(outcome, perf_counter() - since)
        except Exception as err:
            self._faults.report(_COMPONENT, err)

    def _timed_statement(
        self, original: Callable[..., Any], has_params: bool
    ) -> Callable[..., Any]:
        query = self._events.query
        starting = self._events.statement_started
        report = self._faults.report
        clock = perf_counter

        def execute(cursor: Any, statement: str, *args: Any, **kwargs: Any) -> Any:
            if not self._active:
                return original(cursor, statement, *args, **kwargs)
            try:
                starting()
            except Exception as err:
                report(_COMPONENT, err)
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
                    report(_COMPONENT, err)
                raise
            elapsed = clock() - started
            try:
                params = args[0] if has_params and args else None
                query(statement, elapsed, False, params, has_params and _continues_batch(args))
            except Exception as err:
                report(_COMPONENT, err)
            return result

        return execute

    def _timed_acquire(
        self, original: Callable[[], PoolProxiedConnection]
    ) -> Callable[[], PoolProxiedConnection]:
        events = self._events
        report = self._faults.report

        def connect() -> PoolProxiedConnection:
            if not self._active:
                return original()
            try:
                ticket = events.acquire_started()
            except Exception as err:
                report(_COMPONENT, err)
                return original()
            record = ConnectTime()
            token = _acquire.set(record)
            gate = self.gate
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
                    report(_COMPONENT, err)
                raise
            _acquire.reset(token)
            try:
                holder = _holder(connection)
                if permit:
                    self._permits.add(holder)
                events.acquire_succeeded(ticket, holder, record.connecting)
            except Exception as err:
                report(_COMPONENT, err)
            return connection

        return connect

    def _following_recreate(self, original: Callable[[], Pool]) -> Callable[[], Pool]:
        def recreate() -> Pool:
            pool = original()
            if self._active:
                try:
                    self._hook_pool(pool)
                except Exception as err:
                    self._faults.report(_COMPONENT, err)
            return pool

        return recreate

    def _marking_creator(
        self, original: Callable[[ConnectionPoolEntry], Any]
    ) -> Callable[[ConnectionPoolEntry], Any]:
        def invoke_creator(entry: ConnectionPoolEntry) -> Any:
            try:
                # Kept on the entry rather than in a dict of ours: a connect that fails
                # leaves nothing behind to leak.
                entry.info[_CONNECT_STARTED] = perf_counter()
            except Exception as err:
                self._faults.report(_COMPONENT, err)
            # A QueuePool counts a connection as checked out from the moment it starts
            # opening it; the server shows it only once it is open (see open_connections).
            self.connecting += 1
            try:
                return original(entry)
            finally:
                self.connecting -= 1

        return invoke_creator

    # -- listeners -----------------------------------------------------------------------

    def _on_connect(self, dbapi_connection: Any, entry: ConnectionPoolEntry) -> None:
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
                self._events.connection_created(seconds)
        except Exception as err:
            self._faults.report(_COMPONENT, err)

    def _on_release(self, dbapi_connection: Any, entry: ConnectionPoolEntry) -> None:
        try:
            if dbapi_connection is not None:
                self._lost_transaction(dbapi_connection)
            self._events.released(id(entry.record_info))
        except Exception as err:
            self._faults.report(_COMPONENT, err)

    def _on_invalidate(self, dbapi_connection: Any, entry: ConnectionPoolEntry, *_: Any) -> None:
        # The connection is being thrown away (a disconnect): a transaction still open on
        # it is lost, and SQLAlchemy will not call do_rollback for it.
        try:
            if dbapi_connection is not None:
                self._lost_transaction(dbapi_connection)
        except Exception as err:
            self._faults.report(_COMPONENT, err)

    def _lost_transaction(self, dbapi_connection: Any) -> None:
        since = self._opened.pop(id(dbapi_connection), None)
        if since is not None:  # back in the pool, or thrown away, with it still open
            self._finish(ROLLED_BACK_BY_ERROR, since)

    def _on_detach(self, dbapi_connection: Any, entry: ConnectionPoolEntry) -> None:
        # A detached connection leaves the pool for good, and never comes back to
        # _do_return_conn: its permit goes back now.
        self._on_release(dbapi_connection, entry)
        self._give_back(id(entry.record_info))

    def _give_back(self, holder: int) -> None:
        gate = self.gate
        if gate is not None and holder in self._permits:
            self._permits.discard(holder)
            gate.leave()

    def _returning(
        self, pool: Pool, original: Callable[[ConnectionPoolEntry], None]
    ) -> Callable[[ConnectionPoolEntry], None]:
        def do_return_conn(entry: ConnectionPoolEntry) -> None:
            holder = id(entry.record_info)
            try:
                gate = self.gate
                drop = getattr(pool, "_dec_overflow", None)
                if gate is not None and callable(drop) and gate.over_limit():
                    try:
                        entry.close()
                    finally:
                        drop()
                    return
                original(entry)
            finally:
                self._give_back(holder)

        return do_return_conn
