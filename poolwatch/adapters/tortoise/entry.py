"""What entering a Tortoise connection context manager has taken, and how to give it back,
on each Tortoise version poolwatch was read on.

Tortoise's context managers take a connection (or SQLite's lock) and then do more before
they hand it over: a transaction sends ``BEGIN`` (Tortoise 0.2x also sets the task's
connection before it waits), SQLite may open its connection first. A cancellation landing
in between makes ``__aenter__`` raise with the connection still taken, and ``async with``
never calls ``__aexit__`` for an entry that failed. Tortoise does not guard against it:
its own ``in_transaction()`` under the app's ``asyncio.wait_for`` loses a pool of 10 in
one round of 2,000 requests. poolwatch wraps exactly these entries, so it undoes them.

Where each version keeps things is one :class:`Layout` per ``(major, minor)`` in
:data:`LAYOUTS`, read from the source of 0.21.0, 0.21.7, 0.22.2, 0.23.0, 0.24.2, 0.25.4,
1.0.0 and 1.1.9. From it, one :class:`Entry` per context-manager class knows where the
entry keeps what it took:

* ``PoolConnectionWrapper``: the connection, in ``connection``; the pool it came from, in
  its own ``pool`` (to 0.23) or its client's ``_pool`` (0.24 on).
* ``TransactionContextPooled``: the connection, in its transaction wrapper's
  ``_connection`` (the wrapper in ``connection`` to 0.23, in ``client`` from 0.24); the
  task's connection override, in ``token``.
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

Two more holes in old versions lose connections, so poolwatch runs the next version's
code in their place: Tortoise 0.21's transaction exits have no ``try``/``finally`` (a
``COMMIT`` that raises, a cancellation or a dropped connection, skips the release, and
the connection, SQLite's lock, is gone for good); and up to 0.23 every task that comes
before a client's pool exists creates a pool of its own (200 first requests, 200 pools:
all but the last are never closed, nor seen by the client's gauges).

This module and :mod:`poolwatch.adapters.tortoise.instrumentation` are the only ones touching these
private attributes.
"""

from __future__ import annotations

import asyncio
import dataclasses
import importlib
import inspect
import logging
import weakref
from collections.abc import Callable, Coroutine
from typing import Any

__all__ = [
    "CLOSED",
    "LAYOUTS",
    "RETURNED",
    "Entry",
    "Layout",
    "PoolCheckout",
    "PoolInit",
    "PooledTransaction",
    "Seam",
    "SqliteLock",
    "SqliteTransaction",
    "layout_for",
    "resolve",
    "root_client",
]

logger = logging.getLogger("poolwatch")

RETURNED = "returned"  # handed back to the driver's pool (which restores or drops it)
CLOSED = "closed"  # closed, then handed back: the pool frees its slot

BASE = "tortoise.backends.base.client"
SQLITE = "tortoise.backends.sqlite.client"

GiveBack = Coroutine[Any, Any, str]
Exit = Callable[..., Coroutine[Any, Any, Any]]


@dataclasses.dataclass(frozen=True)
class Layout:
    """Where one Tortoise minor version keeps what poolwatch reads and wraps."""

    checkout_pool: str
    """``PoolConnectionWrapper``'s pool: its own ``pool`` (to 0.23), the one it took its
    connection from even if the client has another by now, else ``client``'s ``_pool``."""
    transaction_wrapper: str
    """``TransactionContextPooled``'s TransactionWrapper: ``connection`` (to 0.23) or
    ``client`` (from 0.24)."""
    token_before_acquire: bool
    """The pooled transaction sets the task's connection override before it waits for a
    connection (to 0.25) or after it has one (1.x). A failed entry's override is undone
    whichever it got to; this records the order, which tests check against the source."""
    exit_has_finally: bool
    """Transaction exits release in a ``finally`` (0.22 on); 0.21's do not."""
    pool_init_lock: bool
    """Checkouts create the client's pool under a lock (0.24 on); before, each one that
    finds no pool creates one."""
    sqlite_transaction: tuple[str, str]
    """SQLite's transaction context, ``(module, class)``: the base ``TransactionContext``
    to 0.22, ``SqliteTransactionContext`` from 0.23."""
    sqlite_transaction_lock: str
    """Its reference to the client's lock: ``lock`` (to 0.22) or ``_trxlock``."""
    connection_lock: str
    """``ConnectionWrapper``'s lock: ``lock`` (to 0.23) or ``_lock``. It takes the lock
    before opening SQLite's connection, except on 0.21.0 (after): the tracked lock below
    is right either way."""
    transactional: str
    """The base class of transaction wrappers: ``BaseTransactionWrapper`` (to 0.23) or
    ``TransactionalDBClient``."""
    context_connections: bool
    """The connection override lives in ``get_connections()``, one handler per Tortoise
    context (1.x), not in the module-level ``connections`` (0.2x)."""


_V0_21 = Layout(
    checkout_pool="pool",
    transaction_wrapper="connection",
    token_before_acquire=True,
    exit_has_finally=False,
    pool_init_lock=False,
    sqlite_transaction=(BASE, "TransactionContext"),
    sqlite_transaction_lock="lock",
    connection_lock="lock",
    transactional="BaseTransactionWrapper",
    context_connections=False,
)
_V0_22 = dataclasses.replace(_V0_21, exit_has_finally=True)
_V0_23 = dataclasses.replace(
    _V0_22,
    sqlite_transaction=(SQLITE, "SqliteTransactionContext"),
    sqlite_transaction_lock="_trxlock",
)
_V0_24 = dataclasses.replace(
    _V0_23,
    checkout_pool="client._pool",
    transaction_wrapper="client",
    pool_init_lock=True,
    connection_lock="_lock",
    transactional="TransactionalDBClient",
)
_V1_0 = dataclasses.replace(_V0_24, token_before_acquire=False, context_connections=True)

LAYOUTS: dict[tuple[int, int], Layout] = {
    (0, 21): _V0_21,
    (0, 22): _V0_22,
    (0, 23): _V0_23,
    (0, 24): _V0_24,
    (0, 25): _V0_24,
    (1, 0): _V1_0,
    (1, 1): _V1_0,
}
"""Every Tortoise ``(major, minor)`` whose source these entries were written from."""


def layout_for(version: tuple[int, int]) -> Layout | None:
    """The layout of Tortoise ``version``, or ``None`` if it was never read."""
    return LAYOUTS.get(version)


def root_client(client: Any) -> Any:
    """The client that owns the pool: a TransactionWrapper's ``_parent`` chain ends there."""
    seen = 0
    while getattr(client, "_parent", None) is not None and seen < 64:
        client = client._parent
        seen += 1
    return client


def _connections(layout: Layout) -> Any:
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
            _connections(self._layout).reset(token)
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
            await _finish(wrapper, exc_type)
        finally:
            if wrapper._parent._pool:
                await wrapper._parent._pool.release(wrapper._connection)
            _connections(self._layout).reset(manager.token)

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


async def _finish(wrapper: Any, exc_type: Any) -> None:
    """Commit, or roll back after an error (Tortoise's own rule, in every version)."""
    from tortoise.exceptions import TransactionManagementError

    if not wrapper._finalized:
        if exc_type:
            # Can't rollback a transaction that already failed.
            if exc_type is not TransactionManagementError:
                await wrapper.rollback()
        else:
            await wrapper.commit()


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
            _connections(self._layout).reset(token)
        if lock is None or not lock.held:
            return None
        return _sqlite_give_back(manager.connection, lock)

    async def _exit_with_finally(
        self, manager: Any, exc_type: Any, exc_val: Any, exc_tb: Any
    ) -> None:
        """Tortoise 0.22's exit, for 0.21's, which keeps the lock if COMMIT raises."""
        try:
            await _finish(manager.connection, exc_type)
        finally:
            _connections(self._layout).reset(manager.token)
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


# -- which classes, in which module ----------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Seam:
    """One context manager that takes a connection, found in this Tortoise."""

    cls: type
    entry: Entry
    trims: bool = False
    """Its exit is a bare release, so autosize may close the connection on the way back
    (a transaction's exit commits first)."""


def resolve(layout: Layout) -> tuple[list[Seam], list[str]]:
    """The seams of ``layout`` found in the installed Tortoise, and what is missing
    (``"TransactionContextPooled.token"``). A backend whose driver is not installed is
    neither: its classes are simply not there to wrap."""
    missing: list[str] = []
    base = importlib.import_module(BASE)
    transactional = getattr(base, layout.transactional, None)
    if not isinstance(transactional, type):
        missing.append(f"{BASE}.{layout.transactional}")
        transactional = _Never
    init = PoolInit()  # shared: a plain checkout and a transaction may come first together
    wanted: list[tuple[str, str, Entry, bool]] = [
        (BASE, "PoolConnectionWrapper", PoolCheckout(layout, init), True),
        (BASE, "TransactionContextPooled", PooledTransaction(layout, init), False),
        (BASE, "ConnectionWrapper", SqliteLock(layout, transactional), False),
        (*layout.sqlite_transaction, SqliteTransaction(layout), False),
    ]
    found: list[Seam] = []
    for module_name, name, entry, trims in wanted:
        try:
            module = importlib.import_module(module_name)
        except ImportError:  # that backend's driver is not installed
            continue
        cls = getattr(module, name, None)
        if not isinstance(cls, type):
            missing.append(name)
            continue
        methods = ("__aenter__", "__aexit__") + (("ensure_connection",) if entry.ensure else ())
        lacking = [m for m in methods if m not in cls.__dict__]
        slots = _slots(cls)
        if slots is not None:
            lacking += [a for a in entry.attributes if a not in slots]
        if lacking:
            missing.extend(f"{name}.{attribute}" for attribute in lacking)
            continue
        found.append(Seam(cls, entry, trims))
    return found, missing


class _Never:
    """Stands in for a missing base class: no instance is of it."""


def _slots(cls: type) -> set[str] | None:
    """Every attribute an instance of ``cls`` can have, or ``None`` if it is unbounded (a
    class in its MRO has no ``__slots__``, so its instances have a ``__dict__``)."""
    names: set[str] = set()
    for klass in cls.__mro__:
        if klass is object:
            continue
        slots = klass.__dict__.get("__slots__")
        if slots is None:
            return None
        names.update((slots,) if isinstance(slots, str) else slots)
    return names
