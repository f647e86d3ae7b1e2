"""SQLite's entries: Tortoise's SQLite client has one connection behind a lock, so what an
entry takes is the lock (and, on first use, the connection it opens while holding it).

Which of its awaits a cancellation may cut short, and what each leaves taken, is in
:mod:`.entry`'s docstring with the pooled entries'. The lock is tracked by
:class:`_TrackedLock`, put in place of the manager's own reference (its ``lock``,
``_lock`` or ``_trxlock``, per :class:`~.layouts.Layout`) for the length of an entry:
Tortoise's ``asyncio.Lock`` cannot say who holds it. These managers' attributes are
touched here only.
"""

from __future__ import annotations

import asyncio
from typing import Any

from poolwatch.adapters.tortoise.entry import (
    RETURNED,
    Entry,
    GiveBack,
    connections_handler,
    finish_transaction,
    root_client,
)
from poolwatch.adapters.tortoise.layouts import Layout

__all__ = ["SqliteLock", "SqliteTransaction"]


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


def _track_lock(manager: Any, name: str) -> _TrackedLock | None:
    lock = getattr(manager, name, None)
    if lock is None or isinstance(lock, _TrackedLock):
        return lock
    tracked = _TrackedLock(lock)
    setattr(manager, name, tracked)
    return tracked


class SqliteTransaction(Entry):
    """SQLite's transaction context: the client's lock, then the override ``token``, then
    ``BEGIN`` (to 0.23 the connection is opened before the lock is taken, from 0.24
    after)."""

    transaction = True

    def __init__(self, layout: Layout) -> None:
        self._layout = layout
        self._lock = layout.sqlite_transaction_lock
        self.attributes = ("connection", "token", layout.sqlite_transaction_lock)
        if not layout.exit_has_finally:
            self.exit = self._exit_with_finally

    def owner(self, manager: Any) -> Any:
        return root_client(manager.connection)

    def client(self, manager: Any) -> Any:
        return manager.connection

    def before(self, manager: Any) -> tuple[_TrackedLock | None, Any]:
        return _track_lock(manager, self._lock), getattr(manager, "token", None)

    def taken(self, manager: Any, before: tuple[_TrackedLock | None, Any]) -> bool:
        return before[0] is not None and before[0].held

    def undo(self, manager: Any, before: tuple[_TrackedLock | None, Any]) -> GiveBack | None:
        lock, token_before = before
        token = getattr(manager, "token", None)
        if token is not None and token is not token_before:
            connections_handler(self._layout).reset(token)
        if lock is None or not lock.held:
            return None
        return _sqlite_give_back(manager.connection, lock)

    async def _exit_with_finally(
        self, manager: Any, exc_type: Any, exc_val: Any, exc_tb: Any
    ) -> None:
        """Tortoise 0.22's exit, for 0.21's, which keeps the lock if COMMIT raises."""
        try:
            await finish_transaction(manager.connection, exc_type)
        finally:
            connections_handler(self._layout).reset(manager.token)
            getattr(manager, self._lock).release()


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
    the connection is opened while the lock is held (0.21.0 opens it first). Every
    backend's transaction wrapper uses it too, as a lock around a connection the
    transaction already holds: that is not a checkout."""

    def __init__(self, layout: Layout, transactional: type) -> None:
        self._lock = layout.connection_lock
        self._transactional = transactional
        self.attributes = ("client", "connection", layout.connection_lock)

    def owner(self, manager: Any) -> Any:
        client = manager.client
        return None if isinstance(client, self._transactional) else client

    def before(self, manager: Any) -> _TrackedLock | None:
        if manager.connection:  # already open: nothing is awaited once the lock is taken
            return None
        return _track_lock(manager, self._lock)

    def taken(self, manager: Any, before: _TrackedLock | None) -> bool:
        return before is not None and before.held

    def undo(self, manager: Any, before: _TrackedLock | None) -> GiveBack | None:
        if before is None or not before.held:
            return None
        return _release_lock(before)


async def _release_lock(lock: _TrackedLock) -> str:
    lock.release()
    return RETURNED
