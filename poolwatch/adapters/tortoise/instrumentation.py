"""Tortoise-ORM adapter: the one module that wraps Tortoise's client classes.

Tortoise has no hooks for pools or queries, so poolwatch wraps, at class level and
reversibly, the few methods every backend goes through:

* ``execute_*`` on every client class (and each backend's ``TransactionWrapper``), for
  queries. These methods call each other (``execute_query_dict`` ->
  ``execute_query_dict_with_affected`` -> ``execute_query``), so a context variable marks
  "inside a query" and only the outermost call is counted.
* ``__aenter__`` / ``__aexit__`` of the context managers that take a connection from the
  pool: ``PoolConnectionWrapper`` and ``TransactionContextPooled`` (asyncpg, psycopg,
  MySQL), ``ConnectionWrapper`` on a non-transactional client and SQLite's transaction
  context (SQLite: one connection behind a lock, so the acquire wait is the lock wait).
  Where each Tortoise version keeps what they take is :mod:`.layouts` (one layout per
  minor version); which classes are there, :mod:`.seams`; what an entry took, :mod:`.entry`.
* the driver's connect function, for creation time: ``create_pool``'s ``connect=`` for
  asyncpg, a ``connection_class`` subclass for psycopg, ``create_connection`` for SQLite.
  aiomysql and asyncmy pools open connections inside the driver with no seam to time.

Gauges (used, idle, max) are read from the driver's own pool at scrape time: asyncpg's
``get_size``/``get_idle_size``, psycopg_pool's ``get_stats``, aiomysql's ``size``/
``freesize``, the SQLite lock. Private attributes of Tortoise are touched only here, in
:func:`read_pool_state` and the backend wrappers, and in :mod:`.entry` and :mod:`.sqlite_entry`.

On a Tortoise version that was not read (see :data:`SUPPORTED`), or one missing a class
or attribute its layout names, only the statements are observed (``execute_*`` is the
clients' public API): one warning says what is off, and nothing private is touched.
"""

from __future__ import annotations

import asyncio
import contextvars
import functools
import importlib
import inspect
import logging
from collections.abc import Callable, Coroutine
from time import perf_counter
from typing import Any, TypeVar

from poolwatch.adapters.completion import cancel_once, complete, complete_in_task, keep_task
from poolwatch.adapters.timing import ConnectTime
from poolwatch.adapters.tortoise.asyncpg_return import Pending, ReturnHook
from poolwatch.adapters.tortoise.entry import Entry, root_client
from poolwatch.adapters.tortoise.layouts import SUPPORTED, Layout, layout_for, tortoise_version
from poolwatch.adapters.tortoise.seams import Seam, resolve
from poolwatch.errors import PoolWatchError
from poolwatch.events import COMMIT, ROLLBACK, ROLLED_BACK_BY_ERROR, PoolEvents, PoolState
from poolwatch.queries.fingerprint import dialect_of
from poolwatch.sizing.appname import tag_server_settings, tagged_name
from poolwatch.sizing.budget import POSTGRES_LIMITS_SQL, ServerLimits
from poolwatch.sizing.gate import Gate

__all__ = [
    "TortoiseInstrumentation",
    "open_connections",
    "postgres_limits_reader",
    "read_pool_state",
]

logger = logging.getLogger("poolwatch")

_QUERY_METHODS = (
    "execute_query",
    "execute_query_dict",
    "execute_query_dict_with_affected",
    "execute_insert",
    "execute_many",
    "execute_script",
)
_BACKENDS = ("sqlite", "asyncpg", "psycopg", "mysql")

T = TypeVar("T")
AsyncMethod = Callable[..., Coroutine[Any, Any, Any]]


class _Clock:
    """When the current query started, and the time inside it spent getting a
    connection, not querying."""

    __slots__ = ("acquiring", "started")

    def __init__(self, started: float) -> None:
        self.started = started
        self.acquiring = 0.0

    def querying(self) -> float:
        """Seconds of the query so far, its wait for a connection left out."""
        return perf_counter() - self.started - self.acquiring


class _Open:
    """A transaction block inside its ``async with``: since when, and whether the
    application called the transaction's ``rollback()`` itself."""

    __slots__ = ("rolled_back", "since")

    def __init__(self, since: float) -> None:
        self.since = since
        self.rolled_back = False


_query_clock: contextvars.ContextVar[_Clock | None] = contextvars.ContextVar(
    "poolwatch_tortoise_query", default=None
)
_acquire: contextvars.ContextVar[ConnectTime | None] = contextvars.ContextVar(
    "poolwatch_tortoise_acquire", default=None
)


def _versions(versions: tuple[tuple[int, int], ...]) -> str:
    return ", ".join(f"{major}.{minor}" for major, minor in versions)


def read_pool_state(client: Any) -> PoolState | None:
    """What the driver's pool behind a Tortoise client says about itself.

    The only function reading Tortoise's private ``_pool``, ``_lock`` and ``_connection``.
    """
    pool = getattr(client, "_pool", None)
    if pool is not None:
        if hasattr(pool, "get_idle_size"):  # asyncpg
            size, idle = pool.get_size(), pool.get_idle_size()
            return PoolState(used=size - idle, idle=idle, max=pool.get_max_size())
        if hasattr(pool, "get_stats"):  # psycopg_pool
            stats = pool.get_stats()
            size, idle = stats.get("pool_size", 0), stats.get("pool_available", 0)
            return PoolState(used=size - idle, idle=idle, max=stats.get("pool_max"))
        if hasattr(pool, "freesize"):  # aiomysql, asyncmy
            size, idle = pool.size, pool.freesize
            return PoolState(used=size - idle, idle=idle, max=pool.maxsize)
        return PoolState(used=None, idle=None, max=None)
    lock = getattr(client, "_lock", None)
    if lock is not None and hasattr(client, "filename"):  # SQLite: one connection, one lock
        used = 1 if lock.locked() else 0
        opened = 1 if getattr(client, "_connection", None) is not None else 0
        return PoolState(used=used, idle=max(0, opened - used), max=1)
    return None


def open_connections(client: Any) -> int:
    """Connections the driver's pool behind ``client`` holds open, used or idle."""
    state = read_pool_state(client)
    if state is None:
        return 0
    return (state.used or 0) + (state.idle or 0)


def postgres_limits_reader(
    client: Any, current: Callable[[], Any]
) -> Callable[[], Coroutine[Any, Any, ServerLimits]] | None:
    """A reader of the server's connection limits, if ``client`` is on PostgreSQL.

    ``current()`` returns the client to ask each time (the latest of its name).
    """
    if not type(client).__module__.startswith(
        ("tortoise.backends.asyncpg", "tortoise.backends.psycopg")
    ):
        return None

    async def read() -> ServerLimits:
        rows = await current().execute_query_dict(POSTGRES_LIMITS_SQL)
        return ServerLimits.from_row(tuple(rows[0].values()))

    return read


class TortoiseInstrumentation:
    """Installs and removes the wrappers. One may be installed per process.

    ``events_for(name)`` returns the :class:`PoolEvents` of the Tortoise connection
    ``name``; ``on_client(name, client)`` is told which root client serves that name so
    its pool can be read at scrape time.
    """

    _installed: TortoiseInstrumentation | None = None

    def __init__(
        self,
        events_for: Callable[[str], PoolEvents],
        on_client: Callable[[str, Any], None],
        gate_for: Callable[[str, Any], Gate | None] | None = None,
        tag_for: Callable[[str], str | None] = lambda name: None,
    ) -> None:
        self._events_for = events_for
        self._on_client = on_client
        self._gate_for = gate_for
        # The application_name tag of a connection name's pool (autosize's budget), if any.
        self._tag_for = tag_for
        self._events: dict[str, PoolEvents] = {}
        self._gates: dict[str, Gate | None] = {}
        # Checkouts (their context managers' ids) holding a permit of a gate's limiter ->
        # the permit's return waiting inside asyncpg's own release (None: after it).
        self._permits: dict[int, Pending | None] = {}
        self._returns = ReturnHook()
        self._clients: dict[str, Any] = {}
        # id(root client) -> (client, its pool's events, its gate): the per-checkout lookup
        self._by_client: dict[int, tuple[Any, PoolEvents, Gate | None]] = {}
        self._patched: list[tuple[type, str, Any]] = []
        # Give-backs and releases still running, shielded from their caller's cancellation.
        self._shielded: set[asyncio.Task[Any]] = set()
        # Checkouts are wrapped: pools are read and gated. Without them (a Tortoise whose
        # layout is unknown) a pool's gauges would show every connection as unaccounted.
        self._observe_pools = False
        # Open transaction blocks, by their transaction clients' ids.
        self._began: dict[int, _Open] = {}

    # -- install / uninstall -------------------------------------------------------------

    def install(self) -> None:
        """Wrap Tortoise's classes. Raises if another instrumentation is installed."""
        if TortoiseInstrumentation._installed is not None:
            raise PoolWatchError(
                "Tortoise-ORM is already instrumented by another PoolWatch; "
                "call its uninstrument() first"
            )
        version = tortoise_version()
        from tortoise.backends.base import client as base

        for backend in _BACKENDS:
            try:
                importlib.import_module(f"tortoise.backends.{backend}.client")
            except ImportError:  # that backend's driver is not installed
                continue
        try:
            for cls in _subclasses(base.BaseDBAsyncClient):
                for name in _QUERY_METHODS:
                    if name in cls.__dict__:
                        self._patch(cls, name, self._wrap_query(cls.__dict__[name]))
        except BaseException:
            self.uninstall()
            raise
        self._install_pools(version)
        TortoiseInstrumentation._installed = self

    def _install_pools(self, version: tuple[int, int]) -> None:
        """Wrap the checkouts and the backends' extras if this version's layout is known
        and all there; else leave them alone, with one warning saying what is off."""
        number = f"{version[0]}.{version[1]}"
        found = f"Tortoise-ORM {number}"
        off = (
            "only statements are observed; pool gauges, acquire waits, the acquire "
            "timeout, autosize and the give-back of a failed entry are off"
        )
        layout = layout_for(version)
        if layout is None:
            logger.warning(
                "poolwatch was tested with Tortoise-ORM %s, found %s: %s",
                _versions(SUPPORTED),
                number,
                off,
            )
            return
        seams, missing = resolve(layout)
        if missing:
            logger.warning("poolwatch: %s lacks %s: %s", found, ", ".join(missing), off)
            return
        start = len(self._patched)
        try:
            for seam in seams:
                self._patch_acquire(seam)
            self._patch_rollbacks(layout)
            unwrapped = self._patch_backends()
        except Exception as exc:  # a seam not as its layout says: never fail the app
            self._unpatch(start)
            logger.warning("poolwatch: %s could not be wrapped (%r): %s", found, exc, off)
            return
        self._observe_pools = True
        if unwrapped:
            logger.warning(
                "poolwatch: %s lacks %s: connection creation time (and psycopg's guarded "
                "acquire and release) are not observed there",
                found,
                ", ".join(unwrapped),
            )

    def uninstall(self) -> None:
        """Restore every wrapped attribute to what it was."""
        self._returns.uninstall()
        self._unpatch(0)
        self._observe_pools = False
        if TortoiseInstrumentation._installed is self:
            TortoiseInstrumentation._installed = None

    def _unpatch(self, start: int) -> None:
        """Restore the attributes wrapped since the ``start``-th patch."""
        while len(self._patched) > start:
            owner, name, original = self._patched.pop()
            setattr(owner, name, original)

    def _patch(self, owner: type, name: str, replacement: Any) -> None:
        self._patched.append((owner, name, owner.__dict__[name]))
        setattr(owner, name, replacement)

    def _patch_rollbacks(self, layout: Layout) -> None:
        """Wrap each transaction client's ``rollback``: a transaction the application
        rolled back itself ends as a rollback, not as the commit of a clean exit."""
        from tortoise.backends.base import client as base

        transactional = getattr(base, layout.transactional, None)
        if not isinstance(transactional, type):
            return
        for cls in _subclasses(transactional):
            rollback = cls.__dict__.get("rollback")
            if callable(rollback) and not getattr(rollback, "__isabstractmethod__", False):
                self._patch(cls, "rollback", self._wrap_rollback(rollback))

    def _wrap_rollback(self, original: AsyncMethod) -> AsyncMethod:
        began = self._began

        @functools.wraps(original)
        def rollback(self: Any) -> Coroutine[Any, Any, Any]:
            # Inside the block only: the rollback of an exit comes after the exit took
            # the block out of ``began``, and is counted by the exit itself.
            state = began.get(id(self))
            if state is not None:
                state.rolled_back = True
            return original(self)

        return rollback

    def _patch_backends(self) -> list[str]:
        """Wrap each backend's connect seam (and psycopg's pool); returns those missing."""
        missing: list[str] = []

        def wrap(cls: type, name: str, wrapper: Callable[[Any], Any]) -> None:
            original = cls.__dict__.get(name)
            if original is None:
                missing.append(f"{cls.__name__}.{name}")
            else:
                self._patch(cls, name, wrapper(original))

        try:
            from tortoise.backends.sqlite.client import SqliteClient
        except ImportError:
            pass
        else:
            wrap(SqliteClient, "create_connection", self._wrap_create_connection)
        try:
            from tortoise.backends.asyncpg.client import AsyncpgDBClient
        except ImportError:
            pass
        else:
            wrap(
                AsyncpgDBClient,
                "create_pool",
                functools.partial(self._wrap_create_pool, seam="connect"),
            )
        try:
            from tortoise.backends.psycopg.client import AsyncConnectionPool, PsycopgClient
        except ImportError:
            pass
        else:
            wrap(
                PsycopgClient,
                "create_pool",
                functools.partial(self._wrap_create_pool, seam="connection_class"),
            )
            if all(name in AsyncConnectionPool.__dict__ for name in ("acquire", "release")):
                self._patch_psycopg_pool(AsyncConnectionPool)
            else:
                missing.append("AsyncConnectionPool.acquire/release")
        return missing

    # -- per-client lookups (hot path) -----------------------------------------------------

    def _pool_events(self, client: Any) -> PoolEvents:
        """The events of the pool that ``client`` (a root client) belongs to."""
        return self._pool(client)[1]

    def _pool(self, client: Any) -> tuple[Any, PoolEvents, Gate | None]:
        # One dict hit per checkout; the identity check guards against a reused id.
        known = self._by_client.get(id(client))
        if known is not None and known[0] is client:
            return known
        return self._register(client)

    def _register(self, client: Any) -> tuple[Any, PoolEvents, Gate | None]:
        name = client.connection_name
        events = self._events.get(name)
        if events is None:
            events = self._events[name] = self._events_for(name)
            events.dialect = dialect_of(_dialect_name(client))
        if not self._observe_pools:
            return client, events, None
        previous = self._clients.get(name)
        if previous is not client:
            if previous is not None:  # Tortoise was initialised again: a new client
                self._by_client.pop(id(previous), None)
            self._clients[name] = client
            self._on_client(name, client)
        if name not in self._gates:
            gate = self._gates[name] = self._gate_for(name, client) if self._gate_for else None
            if gate is not None and gate.limits() and not self._returns.installed:
                self._returns.install()
        entry = self._by_client[id(client)] = (client, events, self._gates[name])
        return entry

    def _query_events(self, client: Any) -> PoolEvents:
        events = self._events.get(client.connection_name)
        if events is None:
            return self._pool_events(root_client(client))
        return events

    # -- wrappers ------------------------------------------------------------------------

    def _wrap_query(self, original: AsyncMethod) -> AsyncMethod:
        instrumentation = self

        async def timed(client: Any, sql: str, args: tuple[Any, ...], kwargs: Any) -> Any:
            events = instrumentation._query_events(client)
            events.statement_started()
            clock = _Clock(perf_counter())
            token = _query_clock.set(clock)
            try:
                result = await original(client, sql, *args, **kwargs)
            except BaseException as exc:
                elapsed = clock.querying()
                _query_clock.reset(token)
                # A cancelled statement is not a database error; its time is still real.
                events.query(sql, elapsed, isinstance(exc, Exception), args[0] if args else None)
                raise
            elapsed = clock.querying()
            _query_clock.reset(token)
            events.query(sql, elapsed, False, args[0] if args else None)
            return result

        # A plain function returning the coroutine: when another execute_* method calls
        # this one (the statement is already being timed), it hands back the original
        # coroutine itself, with no extra coroutine layer for every await inside it.
        @functools.wraps(original)
        def query(self: Any, sql: str, *args: Any, **kwargs: Any) -> Coroutine[Any, Any, Any]:
            if _query_clock.get() is not None:
                return original(self, sql, *args, **kwargs)
            return timed(self, sql, args, kwargs)

        return query

    def _wrap_acquire(self, original: AsyncMethod, entry: Entry) -> AsyncMethod:
        instrumentation = self

        @functools.wraps(original)
        async def aenter(self: Any) -> Any:
            client = entry.owner(self)
            if client is None:  # a lock inside a transaction, not a pool checkout
                return await original(self)
            _, events, gate = instrumentation._pool(client)
            if _acquire.get() is not None:
                # A checkout inside this task's own acquire (Tortoise's MySQL client takes
                # a connection to set up the pool it is creating) is part of that acquire:
                # it passes the gate, whose permit the outer acquire holds. Through the
                # gate it would wait for a second permit forever at a limit of 1.
                gate = None
            ticket = events.acquire_started()
            record = ConnectTime()
            token = _acquire.set(record)
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
                        lambda: instrumentation._undo(entry, self, before, events),
                    )
                    if permit:
                        instrumentation._permits[id(self)] = instrumentation._returns.when_back(
                            connection, gate.leave
                        )
            except BaseException as exc:
                _acquire.reset(token)
                events.acquire_failed(ticket, exc)
                # The statement fails (and counts as an error), but the time spent
                # waiting is not the statement's duration.
                clock = _query_clock.get()
                if clock is not None:
                    clock.acquiring += perf_counter() - started
                if gate is None:  # (a gate undoes the entry before its permit goes back)
                    await instrumentation._undo(entry, self, before, events)
                raise
            _acquire.reset(token)
            events.acquire_succeeded(ticket, id(self), record.connecting)
            if entry.transaction:  # BEGIN was sent on the way in
                events.transaction_started()
                instrumentation._began[id(entry.client(self))] = _Open(perf_counter())
            clock = _query_clock.get()
            if clock is not None:
                clock.acquiring += perf_counter() - started
            return connection

        return aenter

    async def _undo(self, entry: Entry, manager: Any, before: Any, events: PoolEvents) -> None:
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
        await complete_in_task(_finish_undo(giving, events), self._shielded)

    def _wrap_release(self, original: AsyncMethod, entry: Entry, *, trims: bool) -> AsyncMethod:
        instrumentation = self

        # The checkout ends when the application lets go of the connection, before the
        # driver's own housekeeping (asyncpg resets it, a round trip); until that is over
        # the connection is counted as returning, so the driver's count can be checked.
        @functools.wraps(original)
        def aexit(self: Any, *exc_info: Any) -> Coroutine[Any, Any, Any]:
            client = entry.owner(self)
            if client is None:
                return original(self, *exc_info)
            _, events, gate = instrumentation._pool(client)
            # Released inside a statement being timed: the statement's own checkout,
            # whose time is reported after this (a transaction ends outside any).
            clock = _query_clock.get()
            events.released(id(self), clock.querying() if clock is not None else 0.0)
            events.return_started()
            release = original(self, *exc_info)
            if entry.transaction:
                events.transaction_ended()
                state = instrumentation._began.pop(id(entry.client(self)), None)
                if state is not None:
                    outcome = _outcome(exc_info[0], state.rolled_back)
                    release = _ending(release, events, outcome, state.since)
            permits = instrumentation._permits
            if gate is None or id(self) not in permits:
                return _returning(release, events)
            return _release_through(
                gate,
                release,
                self if trims else None,
                instrumentation._returns,
                permits.pop(id(self)),
                events=events,
            )

        return aexit

    def _patch_acquire(self, seam: Seam) -> None:
        cls, entry = seam.cls, seam.entry
        # Where Tortoise's own exit would lose the connection (0.21), the entry's runs.
        leave = entry.exit or cls.__dict__["__aexit__"]
        if entry.ensure is not None:  # (to 0.23) Tortoise's would create a second pool
            self._patch(cls, "ensure_connection", _as_method(entry.ensure))
        self._patch(cls, "__aenter__", self._wrap_acquire(cls.__dict__["__aenter__"], entry))
        self._patch(cls, "__aexit__", self._wrap_release(leave, entry, trims=seam.trims))

    def _connect_time(self, client: Any, seconds: float) -> None:
        record = _acquire.get()
        if record is not None:  # opened inside an acquire: creation, not waiting
            record.connecting += seconds
        else:  # opened at pool start-up or by a pool's background task
            self._pool_events(client).connection_created(seconds)

    def _patch_psycopg_pool(self, pool_class: type) -> None:
        """Tortoise's psycopg pool: its acquire takes at most one cancellation, its release
        none. psycopg_pool cleans up after a cancellation by awaiting (an acquire gives
        back the connection it was checking), and its ``putconn`` waits for the pool's
        lock, contended under load: a cancellation landing in either drops the connection,
        which the pool goes on counting (the fault campaign lost 2 to 7 of 10 over 60,000
        requests with cancellations). asyncpg shields its own release; this does the same
        for psycopg, at no cost when the call does not have to wait."""
        acquire, release = pool_class.__dict__["acquire"], pool_class.__dict__["release"]
        shielded = self._shielded

        def give_back(pool: Any) -> Callable[[Any], Coroutine[Any, Any, Any]]:
            return lambda connection: complete(release(pool, connection), shielded)

        @functools.wraps(acquire)
        def acquire_once(pool: Any, *args: Any, **kwargs: Any) -> Coroutine[Any, Any, Any]:
            return cancel_once(acquire(pool, *args, **kwargs), shielded, give_back(pool))

        @functools.wraps(release)
        def release_fully(pool: Any, connection: Any) -> Coroutine[Any, Any, Any]:
            return complete(release(pool, connection), shielded)

        self._patch(pool_class, "acquire", acquire_once)
        self._patch(pool_class, "release", release_fully)

    def _wrap_create_connection(self, original: AsyncMethod) -> AsyncMethod:
        instrumentation = self

        @functools.wraps(original)
        async def create_connection(self: Any, *args: Any, **kwargs: Any) -> Any:
            opened = getattr(self, "_connection", None)
            started = perf_counter()
            try:
                result = await original(self, *args, **kwargs)
            except BaseException:
                if opened is None:
                    instrumentation._discard_half_open(self)
                raise
            if opened is None and getattr(self, "_connection", None) is not None:
                instrumentation._connect_time(root_client(self), perf_counter() - started)
            return result

        return create_connection

    def _discard_half_open(self, client: Any) -> None:
        """Forget (and close, in the background) the connection a failed first open left
        in SQLite's client: cancelled while aiosqlite connects (Tortoise to 0.24 stores it
        first), it refuses every statement ever after; cancelled during the PRAGMAs, it
        lacks some of them. The next checkout opens a new one."""
        connection = getattr(client, "_connection", None)
        if connection is None:
            return
        client._connection = None
        keep_task(
            asyncio.get_running_loop().create_task(_close_half_open(connection)), self._shielded
        )

    def _wrap_create_pool(self, original: AsyncMethod, *, seam: str) -> AsyncMethod:
        instrumentation = self

        @functools.wraps(original)
        async def create_pool(self: Any, **kwargs: Any) -> Any:
            root = root_client(self)
            report = functools.partial(instrumentation._connect_time, root)
            tag = instrumentation._tag_for(str(getattr(root, "connection_name", "")))
            if tag is not None:
                tag_pool_parameters(kwargs, tag)
            if seam == "connect":
                kwargs["connect"] = _timed_asyncpg_connect(kwargs.get("connect"), report)
            else:
                kwargs["connection_class"] = _timed_psycopg_class(
                    kwargs.get("connection_class"), report
                )
            return await original(self, **kwargs)

        return create_pool


def tag_pool_parameters(kwargs: dict[str, Any], tag: str) -> None:
    """Put ``tag`` at the end of the application_name of the connections a Tortoise
    PostgreSQL client's ``create_pool(**kwargs)`` will open: asyncpg's
    ``server_settings``, or psycopg's ``conninfo`` string."""
    if "server_settings" in kwargs or "conninfo" not in kwargs:  # asyncpg
        tag_server_settings(kwargs, tag)
        return
    from psycopg.conninfo import conninfo_to_dict, make_conninfo

    conninfo = str(kwargs["conninfo"])
    name = conninfo_to_dict(conninfo).get("application_name")
    kwargs["conninfo"] = make_conninfo(conninfo, application_name=tagged_name(tag, name))


def _outcome(exc_type: Any, rolled_back: bool) -> str:
    """How a transaction block that is exiting ends, if its exit goes through: an
    exception rolls it back (Tortoise's rule in every version), else it commits, unless the
    application already rolled back itself (a ``commit()`` of its own is a commit)."""
    if exc_type is not None:
        return ROLLED_BACK_BY_ERROR
    return ROLLBACK if rolled_back else COMMIT


async def _ending(
    exit_: Coroutine[Any, Any, Any], events: PoolEvents, outcome: str, since: float
) -> Any:
    """A transaction block's exit, then its outcome (an error if the COMMIT failed)."""
    try:
        result = await exit_
    except BaseException:
        events.transaction_finished(ROLLED_BACK_BY_ERROR, perf_counter() - since)
        raise
    events.transaction_finished(outcome, perf_counter() - since)
    return result


async def _returning(release: Coroutine[Any, Any, Any], events: PoolEvents) -> Any:
    try:
        return await release
    finally:
        events.return_finished()


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
            await _close_quietly(getattr(manager, "connection", None))
        return await release
    finally:
        events.return_finished()
        if pending is None or returns.cancel(pending):
            gate.leave()


async def _close_quietly(connection: Any) -> None:
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


async def _close_half_open(connection: Any) -> None:
    """Close an aiosqlite connection whose opening failed, and end its thread.

    Cancelled while it connects, aiosqlite 0.18 to 0.21 has no sqlite3 connection, so its
    ``close()`` returns at once, and leaves its (non-daemon) thread waiting for work: the
    process never exits. ``_stop_running`` (private, those versions only) ends it; 0.17's
    ``close()`` raises there after stopping, and 0.22 stops by itself.
    """
    await _close_quietly(connection)
    stop = getattr(connection, "_stop_running", None)
    if callable(stop) and getattr(connection, "_running", False):
        stop()


def _as_method(function: AsyncMethod) -> AsyncMethod:
    """A plain function calling ``function`` (a bound method), to set on a class."""

    async def method(self: Any, *args: Any) -> Any:
        return await function(self, *args)

    return method


def _timed_asyncpg_connect(
    connect: Callable[..., Coroutine[Any, Any, Any]] | None, report: Callable[[float], None]
) -> Callable[..., Coroutine[Any, Any, Any]]:
    if connect is None:
        import asyncpg

        connect = asyncpg.connect
    inner = connect

    async def timed_connect(*args: Any, **kwargs: Any) -> Any:
        started = perf_counter()
        connection = await inner(*args, **kwargs)
        report(perf_counter() - started)
        return connection

    return timed_connect


def _timed_psycopg_class(base: type | None, report: Callable[[float], None]) -> type:
    if base is None:
        import psycopg

        base = psycopg.AsyncConnection
    parent: Any = base

    class TimedConnection(parent):  # type: ignore[misc]
        @classmethod
        async def connect(cls, *args: Any, **kwargs: Any) -> Any:
            started = perf_counter()
            connection = await super().connect(*args, **kwargs)
            report(perf_counter() - started)
            return connection

    TimedConnection.__name__ = TimedConnection.__qualname__ = f"Timed{parent.__name__}"
    return TimedConnection


def _subclasses(cls: type) -> list[type]:
    found: list[type] = []
    stack = [cls]
    while stack:
        current = stack.pop()
        if current not in found:
            found.append(current)
            stack.extend(current.__subclasses__())
    return found


def _dialect_name(client: Any) -> str:
    # Every Tortoise client declares its dialect ("postgres", "mysql", "sqlite", ...).
    capabilities = getattr(client, "capabilities", None)
    return str(getattr(capabilities, "dialect", "") or "")
