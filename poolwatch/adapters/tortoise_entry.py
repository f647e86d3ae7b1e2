"""What entering a Tortoise connection context manager has taken, and how to give it back.

Tortoise's context managers take a connection (or SQLite's lock) and then do more before
they hand it over: a transaction sends ``BEGIN`` (Tortoise 0.2x also sets the task's
connection before it waits), SQLite may open its connection first. A cancellation landing
in between makes ``__aenter__`` raise with the connection still taken, and ``async with``
never calls ``__aexit__`` for an entry that failed. Tortoise does not guard against it:
its own ``in_transaction()`` under the app's ``asyncio.wait_for`` loses a pool of 10 in
one round of 2,000 requests. poolwatch wraps exactly these entries, so it undoes them.

One :class:`Entry` per context-manager class knows, for the Tortoise versions it was
read on (0.21 to 1.x), where the entry keeps what it took:

* ``PoolConnectionWrapper``: the connection, in ``connection``.
* ``TransactionContextPooled``: the connection, in its transaction wrapper's
  ``_connection``; the task's connection override, in ``token``.
* SQLite's transaction context and ``ConnectionWrapper``: the client's lock, tracked by a
  thin proxy put in place of the manager's own reference for the length of the entry.

Undoing resets the override (in the failing task's own context), then gives the
connection back through the driver's pool, which restores it: psycopg_pool rolls back or
discards, aiomysql and asyncmy close a connection cancelled mid-read and drop it (or one
left in a transaction). asyncpg would wait out a cancelled ``BEGIN`` and roll back too,
but it reports that to the event loop's exception handler as "Resetting connection with
an active transaction", an ERROR line in the app's log for something already handled; so
an asyncpg connection whose ``BEGIN`` was cut off is closed instead (its slot goes back
to the pool, which opens a new connection when one is needed).

This module and :mod:`poolwatch.adapters.tortoise` are the only ones touching these
private attributes.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
from collections.abc import Coroutine
from typing import Any

__all__ = [
    "CLOSED",
    "ENTRIES",
    "RETURNED",
    "Entry",
    "PoolCheckout",
    "PooledTransaction",
    "SqliteLock",
    "SqliteTransaction",
    "reset_connection_token",
]

logger = logging.getLogger("poolwatch")

RETURNED = "returned"  # handed back to the driver's pool (which restores or drops it)
CLOSED = "closed"  # closed, then handed back: the pool frees its slot

GiveBack = Coroutine[Any, Any, str]


class Entry:
    """What one kind of context manager's ``__aenter__`` takes.

    ``before(manager)`` is called just before the entry starts, ``taken(manager, before)``
    at any time while it runs (the acquire timeout asks whether the wait is over), and
    ``undo(manager, before)`` once if the entry failed: it clears, in the calling task,
    what the entry set, and returns the coroutine that gives the connection back (to be
    run shielded from further cancellation), or ``None`` if nothing was taken.
    """

    def before(self, manager: Any) -> Any:
        return None

    def taken(self, manager: Any, before: Any) -> bool:
        raise NotImplementedError

    def undo(self, manager: Any, before: Any) -> GiveBack | None:
        raise NotImplementedError


class PoolCheckout(Entry):
    """``PoolConnectionWrapper``: ``connection`` is set when the pool hands one over."""

    def taken(self, manager: Any, before: Any) -> bool:
        return manager.connection is not None

    def undo(self, manager: Any, before: Any) -> GiveBack | None:
        connection = manager.connection
        if connection is None:
            return None
        manager.connection = None
        return give_back(manager.client._pool, connection)


def _transaction_wrapper(manager: Any) -> Any:
    # Tortoise 0.22+ keeps its TransactionWrapper in ``client``, 0.21 in ``connection``.
    wrapper = getattr(manager, "client", None)
    return wrapper if wrapper is not None else manager.connection


class PooledTransaction(Entry):
    """``TransactionContextPooled``: a connection in the wrapper's ``_connection``, the
    task's connection override in ``token`` (set before the wait on Tortoise 0.2x, after
    it on 1.x)."""

    def before(self, manager: Any) -> tuple[Any, Any, Any]:
        wrapper = _transaction_wrapper(manager)
        return wrapper, wrapper._connection, getattr(manager, "token", None)

    def taken(self, manager: Any, before: tuple[Any, Any, Any]) -> bool:
        connection = before[0]._connection
        return connection is not None and connection is not before[1]

    def undo(self, manager: Any, before: tuple[Any, Any, Any]) -> GiveBack | None:
        wrapper, connection_before, token_before = before
        token = getattr(manager, "token", None)
        if token is not None and token is not token_before:
            reset_connection_token(token)
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


class _TrackedLock:
    """Stands in for an ``asyncio.Lock`` for one entry: knows whether this entry holds it."""

    __slots__ = ("held", "lock")

    def __init__(self, lock: asyncio.Lock) -> None:
        self.lock = lock
        self.held = False

    async def acquire(self) -> bool:
        acquired = await self.lock.acquire()
        self.held = True
        return acquired

    def release(self) -> None:
        self.held = False
        self.lock.release()

    def locked(self) -> bool:
        return self.lock.locked()

    async def __aenter__(self) -> None:
        await self.acquire()

    async def __aexit__(self, *exc_info: object) -> None:
        self.release()


def _track_lock(manager: Any, name: str) -> _TrackedLock:
    lock = getattr(manager, name)
    if isinstance(lock, _TrackedLock):
        return lock
    tracked = _TrackedLock(lock)
    setattr(manager, name, tracked)
    return tracked


class SqliteTransaction(Entry):
    """SQLite's transaction context: the client's lock (``_trxlock``; ``lock`` on 0.21),
    then the override ``token``, then ``BEGIN``."""

    def before(self, manager: Any) -> tuple[_TrackedLock, Any]:
        name = "_trxlock" if hasattr(type(manager), "_trxlock") else "lock"
        return _track_lock(manager, name), getattr(manager, "token", None)

    def taken(self, manager: Any, before: tuple[_TrackedLock, Any]) -> bool:
        return before[0].held

    def undo(self, manager: Any, before: tuple[_TrackedLock, Any]) -> GiveBack | None:
        lock, token_before = before
        token = getattr(manager, "token", None)
        if token is not None and token is not token_before:
            reset_connection_token(token)
        if not lock.held:
            return None
        return _sqlite_give_back(manager.connection, lock)


async def _sqlite_give_back(wrapper: Any, lock: _TrackedLock) -> str:
    try:
        if getattr(wrapper, "_connection", None) is not None and not wrapper._finalized:
            # BEGIN may have been queued on aiosqlite's thread before the cancellation:
            # this ROLLBACK runs after it (a no-op if there was no transaction).
            await wrapper.rollback()
    finally:
        lock.release()
    return RETURNED


class SqliteLock(Entry):
    """``ConnectionWrapper`` on SQLite's own client: the lock, then, on first use only,
    the connection is opened while the lock is held."""

    def before(self, manager: Any) -> _TrackedLock | None:
        if manager.connection:  # already open: nothing is awaited once the lock is taken
            return None
        return _track_lock(manager, "_lock")

    def taken(self, manager: Any, before: _TrackedLock | None) -> bool:
        return before is not None and before.held

    def undo(self, manager: Any, before: _TrackedLock | None) -> GiveBack | None:
        if before is None or not before.held:
            return None
        return _release_lock(before)


async def _release_lock(lock: _TrackedLock) -> str:
    lock.release()
    return RETURNED


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


def reset_connection_token(token: Any) -> None:
    """Undo ``connections.set(...)``: the task sees the pooled client again."""
    handler: Any
    try:
        from tortoise.connection import get_connections  # 1.x: one handler per context
    except ImportError:  # 0.2x: one module-level handler
        from tortoise.connection import connections as handler
    else:
        handler = get_connections()
    handler.reset(token)


# The entry of each wrapped class, by class name (see TortoiseInstrumentation.install).
ENTRIES: dict[str, Entry] = {
    "PoolConnectionWrapper": PoolCheckout(),
    "TransactionContextPooled": PooledTransaction(),
    "SqliteTransactionContext": SqliteTransaction(),
    "ConnectionWrapper": SqliteLock(),
}
