"""What entering a Tortoise connection context manager has taken, and how to give it back,
on each Tortoise version poolwatch was read on.

Tortoise's context managers take a connection (or SQLite's lock) and then do more before
they hand it over: a transaction sends ``BEGIN`` (Tortoise 0.2x also sets the task's
connection before it waits), SQLite may open its connection first. A cancellation landing
in between makes ``__aenter__`` raise with the connection still taken, and ``async with``
never calls ``__aexit__`` for an entry that failed. Tortoise does not guard against it:
its own ``in_transaction()`` under the app's ``asyncio.wait_for`` loses a pool of 10 in
one round of 2,000 requests. poolwatch wraps exactly these entries, so it undoes them.

Where each version keeps things is data, one :class:`~.layouts.Layout` per ``(major,
minor)`` in :mod:`.layouts`; which classes are there to wrap is :mod:`.seams`. Each entry
here reads its layout's fields once, when it is built, so a checkout never branches on the
version. One :class:`Entry` per context-manager class knows where the entry keeps what it
took:

* ``PoolConnectionWrapper``: the connection, in ``connection``; the pool it came from, in
  its own ``pool`` (to 0.23) or its client's ``_pool`` (0.24 on).
* ``TransactionContextPooled``: the connection, in its transaction wrapper's
  ``_connection`` (the wrapper in ``connection`` to 0.23, in ``client`` from 0.24); the
  task's connection override, in ``token``.
* SQLite's transaction context and ``ConnectionWrapper``: the client's lock, tracked by a
  thin proxy put in place of the manager's own reference for the length of the entry
  (:mod:`.sqlite_entry`).

Undoing resets the override (in the failing task's own context), then gives the
connection back through the driver's pool, which restores it: psycopg_pool rolls back or
discards, aiomysql and asyncmy close a connection cancelled mid-read and drop it (or one
left in a transaction). asyncpg would wait out a cancelled ``BEGIN`` and roll back too,
but it reports that to the event loop's exception handler as "Resetting connection with
an active transaction", an ERROR line in the app's log for something already handled; so
an asyncpg connection whose ``BEGIN`` was cut off is closed instead (its slot goes back
to the pool, which opens a new connection when one is needed).

Two more holes in old versions lose connections, so poolwatch runs the next version's
code in their place: Tortoise 0.21's transaction exits have no ``try``/``finally`` (a
``COMMIT`` that raises, a cancellation or a dropped connection, skips the release, and
the connection, SQLite's lock, is gone for good); and up to 0.23 every task that comes
before a client's pool exists creates a pool of its own (200 first requests, 200 pools:
all but the last are never closed, nor seen by the client's gauges).

Private attributes: the pooled managers' ``connection``, ``pool`` and ``token`` and the
transaction wrapper's ``_connection`` and ``_finalized`` are touched here only, by
:class:`PoolCheckout` and :class:`PooledTransaction`; a client's ``_pool``, by them and
:class:`PoolInit` (and read for the gauges by :func:`.pool.read_pool_state`); the
``_parent`` chain, by :func:`root_client` (and the entries' give-backs).
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import weakref
from collections.abc import Callable, Coroutine
from typing import Any

from poolwatch.adapters.tortoise.layouts import Layout

__all__ = [
    "CLOSED",
    "RETURNED",
    "Entry",
    "GiveBack",
    "PoolCheckout",
    "PoolInit",
    "PooledTransaction",
    "connections_handler",
    "finish_transaction",
    "give_back",
    "root_client",
]

logger = logging.getLogger("poolwatch")

RETURNED = "returned"  # handed back to the driver's pool (which restores or drops it)
CLOSED = "closed"  # closed, then handed back: the pool frees its slot

GiveBack = Coroutine[Any, Any, str]
Exit = Callable[..., Coroutine[Any, Any, Any]]


def root_client(client: Any) -> Any:
    """The client that owns the pool: a TransactionWrapper's ``_parent`` chain ends there."""
    seen = 0
    while getattr(client, "_parent", None) is not None and seen < 64:
        client = client._parent
        seen += 1
    return client


def connections_handler(layout: Layout) -> Any:
    """The handler of the task's connection overrides."""
    if layout.context_connections:
        from tortoise.connection import get_connections

        return get_connections()
    import tortoise.connection

    return tortoise.connection.connections


# -- entries ---------------------------------------------------------------------------


class Entry:
    """What one kind of context manager's ``__aenter__`` takes.

    ``owner(manager)`` is the root client whose pool the entry takes from (``None``: this
    entry takes nothing from a pool, e.g. a lock inside a transaction). ``before(manager)``
    is called just before the entry starts, ``taken(manager, before)`` at any time while it
    runs (the acquire timeout asks whether the wait is over), and ``undo(manager, before)``
    once if the entry failed: it clears, in the calling task, what the entry set, and
    returns the coroutine that gives the connection back (to be run shielded from further
    cancellation), or ``None`` if nothing was taken.

    ``attributes`` are the manager's attributes it reads, checked against the class's
    ``__slots__`` before anything is wrapped. ``exit`` replaces an ``__aexit__`` that
    would lose the connection, ``ensure`` an ``ensure_connection`` that would create a
    second pool (``None``: Tortoise's own is right).
    """

    attributes: tuple[str, ...] = ()
    exit: Exit | None = None
    ensure: Exit | None = None
    transaction = False
    """Its exit commits or rolls back (reads after it may see other rows)."""

    def owner(self, manager: Any) -> Any:
        raise NotImplementedError

    def client(self, manager: Any) -> Any:
        """A transaction entry's transaction client, the object the application's
        ``rollback()`` is called on; ``None`` for other entries."""
        return None

    def before(self, manager: Any) -> Any:
        return None

    def taken(self, manager: Any, before: Any) -> bool:
        raise NotImplementedError

    def undo(self, manager: Any, before: Any) -> GiveBack | None:
        raise NotImplementedError


class PoolCheckout(Entry):
    """``PoolConnectionWrapper``: ``connection`` is set when the pool hands one over."""

    def __init__(self, layout: Layout, init: PoolInit) -> None:
        self._own_pool = layout.checkout_pool == "pool"
        self._init = init
        self.attributes = ("client", "connection") + (("pool",) if self._own_pool else ())
        if not layout.pool_init_lock:
            self.ensure = self._ensure_pool

    def owner(self, manager: Any) -> Any:
        return manager.client

    def taken(self, manager: Any, before: Any) -> bool:
        return manager.connection is not None

    def undo(self, manager: Any, before: Any) -> GiveBack | None:
        connection = manager.connection
        if connection is None:
            return None
        manager.connection = None
        pool = manager.pool if self._own_pool else manager.client._pool
        return give_back(pool, connection)

    async def _ensure_pool(self, manager: Any) -> None:
        """Tortoise 0.24's ``ensure_connection``, for those before it (they keep their
        pool in ``pool``)."""
        if not manager.pool:
            await self._init.create(manager.client)
            manager.pool = manager.client._pool


class PooledTransaction(Entry):
    """``TransactionContextPooled``: a connection in the wrapper's ``_connection``, the
    task's connection override in ``token`` (set before the wait to 0.25, after it on
    1.x: whichever of the two an entry got to, it is undone)."""

    transaction = True

    def __init__(self, layout: Layout, init: PoolInit) -> None:
        self._layout = layout
        self._init = init
        self._wrapper = layout.transaction_wrapper
        self.attributes = (layout.transaction_wrapper, "token")
        if not layout.exit_has_finally:
            self.exit = self._exit_with_finally
        if not layout.pool_init_lock:
            self.ensure = self._ensure_pool

    def owner(self, manager: Any) -> Any:
        return root_client(getattr(manager, self._wrapper))

    def client(self, manager: Any) -> Any:
        return getattr(manager, self._wrapper)

    def before(self, manager: Any) -> tuple[Any, Any, Any]:
        wrapper = getattr(manager, self._wrapper)
        return wrapper, wrapper._connection, getattr(manager, "token", None)

    def taken(self, manager: Any, before: tuple[Any, Any, Any]) -> bool:
        connection = before[0]._connection
        return connection is not None and connection is not before[1]

    def undo(self, manager: Any, before: tuple[Any, Any, Any]) -> GiveBack | None:
        wrapper, connection_before, token_before = before
        token = getattr(manager, "token", None)
        if token is not None and token is not token_before:
            connections_handler(self._layout).reset(token)
        connection = wrapper._connection
        if connection is None or connection is connection_before:
            return None
        # Nothing may use this wrapper's connection once it is back in the pool.
        wrapper._connection = connection_before
        wrapper._finalized = True
        # Tortoise's asyncpg wrapper keeps the driver's Transaction in ``transaction``: set
        # means BEGIN was sent (nothing else is awaited after it on the way in).
        close = getattr(wrapper, "transaction", None) is not None
        return give_back(wrapper._parent._pool, connection, close=close)

    async def _exit_with_finally(
        self, manager: Any, exc_type: Any, exc_val: Any, exc_tb: Any
    ) -> None:
        """Tortoise 0.22's exit, for 0.21's, which skips the release if COMMIT raises."""
        wrapper = getattr(manager, self._wrapper)
        try:
            await finish_transaction(wrapper, exc_type)
        finally:
            if wrapper._parent._pool:
                await wrapper._parent._pool.release(wrapper._connection)
            connections_handler(self._layout).reset(manager.token)

    async def _ensure_pool(self, manager: Any) -> None:
        """Tortoise 0.24's ``ensure_connection``, for those before it."""
        await self._init.create(getattr(manager, self._wrapper)._parent)


class PoolInit:
    """Creates a client's pool once however many first checkouts come at once (what
    Tortoise 0.24's ``_pool_init_lock`` does), with one lock per client and event loop."""

    def __init__(self) -> None:
        self._locks: weakref.WeakKeyDictionary[Any, tuple[Any, asyncio.Lock]] = (
            weakref.WeakKeyDictionary()
        )

    async def create(self, client: Any) -> None:
        if client._pool:
            return
        loop = asyncio.get_running_loop()
        known = self._locks.get(client)
        if known is None or known[0] is not loop:
            known = self._locks[client] = (loop, asyncio.Lock())
        async with known[1]:
            if not client._pool:
                await client.create_connection(with_db=True)


async def finish_transaction(wrapper: Any, exc_type: Any) -> None:
    """Commit, or roll back after an error (Tortoise's own rule, in every version)."""
    from tortoise.exceptions import TransactionManagementError

    if not wrapper._finalized:
        if exc_type:
            # Can't rollback a transaction that already failed.
            if exc_type is not TransactionManagementError:
                await wrapper.rollback()
        else:
            await wrapper.commit()


async def give_back(pool: Any, connection: Any, *, close: bool = False) -> str:
    """Hand ``connection`` back to the driver's ``pool``, closed first if ``close``."""
    outcome = RETURNED
    if close and callable(getattr(connection, "terminate", None)):
        try:
            connection.terminate()  # asyncpg: the holder goes back to the pool at once
            outcome = CLOSED
        except Exception:
            # Already back: asyncpg returns the holder of a connection the server dropped
            # (a restart) by itself, and its proxy then refuses every call.
            pass
    released = pool.release(connection)  # aiomysql's returns a future, the others a coroutine
    if inspect.isawaitable(released):
        await released
    return outcome
