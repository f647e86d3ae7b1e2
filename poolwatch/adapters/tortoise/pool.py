"""The driver's pool behind a Tortoise client: what it holds, read at scrape time, and
how its connections are opened, tagged and timed.

Gauges (used, idle, max) are read from the driver's own pool when scraped, never copied
on each event: asyncpg's ``get_size``/``get_idle_size``, psycopg_pool's ``get_stats``,
aiomysql's ``size``/``freesize``, the SQLite lock. Creation time comes from the driver's
connect function: ``create_pool``'s ``connect=`` for asyncpg, a ``connection_class``
subclass for psycopg, ``create_connection`` for SQLite. aiomysql and asyncmy pools open
connections inside the driver with no seam to time. A PostgreSQL pool's connections carry
autosize's tag in their ``application_name`` (:func:`tag_pool_parameters`).

Private attributes: a client's ``_pool``, ``_lock`` and ``_connection`` are read by
:func:`read_pool_state`; SQLite's ``_connection`` also by the ``create_connection``
wrapper (is this the first open?), and cleared by :func:`discard_half_open`; aiosqlite's
``_running``/``_stop_running``, by :func:`_close_half_open` only.
"""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Callable, Coroutine
from time import perf_counter
from typing import Any

from poolwatch.adapters.completion import keep_task
from poolwatch.adapters.tortoise.checkouts import acquiring, close_quietly
from poolwatch.adapters.tortoise.entry import root_client
from poolwatch.adapters.tortoise.statements import AsyncMethod
from poolwatch.events import PoolEvents, PoolState
from poolwatch.sizing.appname import tag_server_settings, tagged_name

__all__ = [
    "connect_timer",
    "discard_half_open",
    "open_connections",
    "read_pool_state",
    "tag_pool_parameters",
    "wrap_create_connection",
    "wrap_create_pool",
]

ConnectTimer = Callable[[Any, float], None]


def read_pool_state(client: Any) -> PoolState | None:
    """What the driver's pool behind a Tortoise client says about itself.

    The gauges' only reader of Tortoise's private ``_pool``, ``_lock`` and ``_connection``.
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
        if not opened and not used:  # not opened yet, or closed: no pool to read
            return None
        return PoolState(used=used, idle=max(0, opened - used), max=1)
    return None


def open_connections(client: Any) -> int:
    """Connections the driver's pool behind ``client`` holds open, used or idle."""
    state = read_pool_state(client)
    if state is None:
        return 0
    return (state.used or 0) + (state.idle or 0)


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


def connect_timer(pool_events: Callable[[Any], PoolEvents]) -> ConnectTimer:
    """Reports the seconds a root client's new connection took to open: to the acquire
    that is waiting for it, if any, else as a creation of ``pool_events(client)``."""

    def connect_time(client: Any, seconds: float) -> None:
        record = acquiring.get()
        if record is not None:  # opened inside an acquire: creation, not waiting
            record.connecting += seconds
        else:  # opened at pool start-up or by a pool's background task
            pool_events(client).connection_created(seconds)

    return connect_time


def wrap_create_pool(
    original: AsyncMethod,
    *,
    seam: str,
    connect_time: ConnectTimer,
    tag_for: Callable[[str], str | None],
) -> AsyncMethod:
    """A PostgreSQL client's ``create_pool``: its connections tagged with
    ``tag_for(connection name)`` and timed through the driver's ``seam`` (asyncpg's
    ``connect``, psycopg's ``connection_class``)."""

    @functools.wraps(original)
    async def create_pool(self: Any, **kwargs: Any) -> Any:
        root = root_client(self)
        report = functools.partial(connect_time, root)
        tag = tag_for(str(getattr(root, "connection_name", "")))
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


def wrap_create_connection(
    original: AsyncMethod, *, connect_time: ConnectTimer, shielded: set[asyncio.Task[Any]]
) -> AsyncMethod:
    """SQLite's ``create_connection``, timed when it opens the client's connection; a
    first open that fails leaves no half-open connection behind."""

    @functools.wraps(original)
    async def create_connection(self: Any, *args: Any, **kwargs: Any) -> Any:
        opened = getattr(self, "_connection", None)
        started = perf_counter()
        try:
            result = await original(self, *args, **kwargs)
        except BaseException:
            if opened is None:
                discard_half_open(self, shielded)
            raise
        if opened is None and getattr(self, "_connection", None) is not None:
            connect_time(root_client(self), perf_counter() - started)
        return result

    return create_connection


def discard_half_open(client: Any, shielded: set[asyncio.Task[Any]]) -> None:
    """Forget (and close, in the background) the connection a failed first open left
    in SQLite's client: cancelled while aiosqlite connects (Tortoise to 0.24 stores it
    first), it refuses every statement ever after; cancelled during the PRAGMAs, it
    lacks some of them. The next checkout opens a new one."""
    connection = getattr(client, "_connection", None)
    if connection is None:
        return
    client._connection = None
    keep_task(asyncio.get_running_loop().create_task(_close_half_open(connection)), shielded)


async def _close_half_open(connection: Any) -> None:
    """Close an aiosqlite connection whose opening failed, and end its thread.

    Cancelled while it connects, aiosqlite 0.18 to 0.21 has no sqlite3 connection, so its
    ``close()`` returns at once, and leaves its (non-daemon) thread waiting for work: the
    process never exits. ``_stop_running`` (private, those versions only) ends it; 0.17's
    ``close()`` raises there after stopping, and 0.22 stops by itself.
    """
    await close_quietly(connection)
    stop = getattr(connection, "_stop_running", None)
    if callable(stop) and getattr(connection, "_running", False):
        stop()


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
