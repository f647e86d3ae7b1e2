"""Installs and removes poolwatch's wrappers on Tortoise's classes, and finds the pool
behind a client: the one module that sets attributes on Tortoise's classes.

Tortoise has no hooks for pools or queries, so poolwatch wraps, at class level and
reversibly, the few methods every backend goes through. This module decides which, on
which version; how each wrapper observes is in the module named:

* ``execute_*`` on every client class (and each backend's ``TransactionWrapper``), for
  statements (:mod:`.statements`).
* ``__aenter__`` / ``__aexit__`` of the context managers that take a connection from the
  pool: ``PoolConnectionWrapper`` and ``TransactionContextPooled`` (asyncpg, psycopg,
  MySQL), ``ConnectionWrapper`` on a non-transactional client and SQLite's transaction
  context (SQLite: one connection behind a lock, so the acquire wait is the lock wait), for
  checkouts (:mod:`.checkouts`). Where each Tortoise version keeps what they take is
  :mod:`.layouts` (one layout per minor version); which classes are there, :mod:`.seams`;
  what an entry took, :mod:`.entry` and :mod:`.sqlite_entry`.
* each transaction client's ``rollback`` (:mod:`.transactions`).
* the driver's connect function, for creation time (:mod:`.pool`), and Tortoise's psycopg
  pool's ``acquire``/``release``, guarded against cancellation (:mod:`.checkouts`).

Every replaced attribute is recorded by :meth:`TortoiseInstrumentation._patch` and put back
by :meth:`~TortoiseInstrumentation.uninstall`. On a Tortoise version that was not read (see
:data:`~.layouts.SUPPORTED`), or one missing a class or attribute its layout names, only the
statements are observed (``execute_*`` is the clients' public API): one warning says what
is off, and nothing private is touched. This module reads no private attribute itself; it
replaces methods of Tortoise's private classes only on a version whose layout resolved.
"""

from __future__ import annotations

import asyncio
import functools
import importlib
import logging
from collections.abc import Callable
from typing import Any

from poolwatch.adapters.tortoise.asyncpg_return import Pending, ReturnHook
from poolwatch.adapters.tortoise.checkouts import psycopg_pool_guards, wrap_acquire, wrap_release
from poolwatch.adapters.tortoise.eager import wrap_execute
from poolwatch.adapters.tortoise.entry import root_client
from poolwatch.adapters.tortoise.layouts import SUPPORTED, Layout, layout_for, tortoise_version
from poolwatch.adapters.tortoise.pool import (
    connect_timer,
    wrap_create_connection,
    wrap_create_pool,
)
from poolwatch.adapters.tortoise.seams import Seam, resolve
from poolwatch.adapters.tortoise.statements import QUERY_METHODS, AsyncMethod, wrap_query
from poolwatch.adapters.tortoise.transactions import Open, wrap_rollback
from poolwatch.errors import PoolWatchError
from poolwatch.events import PoolEvents
from poolwatch.queries.eagerwatch import EagerWatch
from poolwatch.queries.fingerprint import dialect_of
from poolwatch.sizing.gate import Gate

__all__ = ["TortoiseInstrumentation"]

logger = logging.getLogger("poolwatch")

_BACKENDS = ("sqlite", "asyncpg", "psycopg", "mysql")


def _versions(versions: tuple[tuple[int, int], ...]) -> str:
    return ", ".join(f"{major}.{minor}" for major, minor in versions)


class TortoiseInstrumentation:
    """Installs and removes the wrappers. One may be installed per process; an
    ``automatic`` one (what ``poolwatch run`` installs) gives way to an explicit one.

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
        *,
        automatic: bool = False,
        eager: EagerWatch | None = None,
    ) -> None:
        self._events_for = events_for
        # Eager loads of querysets (unused_eager_load), if judged; see _patch_eager.
        self.eager = eager
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
        self._began: dict[int, Open] = {}
        # Installed without the app asking (``poolwatch run``): the app's own explicit
        # instrumentation takes over, and on_yield tells our owner.
        self.automatic = automatic
        self.on_yield: Callable[[], None] | None = None

    @classmethod
    def installed(cls) -> TortoiseInstrumentation | None:
        """The instrumentation installed in this process, if any."""
        return cls._installed

    # -- install / uninstall -------------------------------------------------------------

    def install(self) -> None:
        """Wrap Tortoise's classes. Raises if another instrumentation is installed,
        unless an automatic one and this one is explicit: that one gives way first."""
        installed = TortoiseInstrumentation._installed
        if installed is not None and installed.automatic and not self.automatic:
            installed.give_way()
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
                for name in QUERY_METHODS:
                    if name in cls.__dict__:
                        query = wrap_query(cls.__dict__[name], self._query_events)
                        self._patch(cls, name, query)
        except BaseException:
            self.uninstall()
            raise
        self._patch_eager()
        self._install_pools(version)
        TortoiseInstrumentation._installed = self

    def _patch_eager(self) -> None:
        """Wrap ``QuerySet._execute`` for eager loads (:mod:`.eager`); a Tortoise without
        it has them untracked, with one warning."""
        if self.eager is None:
            return
        from tortoise.queryset import QuerySet

        execute = QuerySet.__dict__.get("_execute")
        if not callable(execute):
            logger.warning(
                "poolwatch: this Tortoise-ORM lacks QuerySet._execute: "
                "unused eager loads are not tracked"
            )
            return
        self._patch(QuerySet, "_execute", wrap_execute(execute, lambda: self.eager))

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

    def give_way(self) -> None:
        """Hand Tortoise over to an explicit instrumentation: its owner is told
        (``on_yield``, once) and stops reading the pools, and every wrapper comes off."""
        on_yield, self.on_yield = self.on_yield, None
        try:
            if on_yield is not None:
                on_yield()
        finally:
            self.uninstall()

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
                self._patch(cls, "rollback", wrap_rollback(rollback, self._began))

    def _patch_backends(self) -> list[str]:
        """Wrap each backend's connect seam (and psycopg's pool); returns those missing."""
        missing: list[str] = []
        connect_time = connect_timer(self._pool_events)

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
            wrap(
                SqliteClient,
                "create_connection",
                functools.partial(
                    wrap_create_connection, connect_time=connect_time, shielded=self._shielded
                ),
            )
        try:
            from tortoise.backends.asyncpg.client import AsyncpgDBClient
        except ImportError:
            pass
        else:
            wrap(
                AsyncpgDBClient,
                "create_pool",
                functools.partial(
                    wrap_create_pool,
                    seam="connect",
                    connect_time=connect_time,
                    tag_for=self._tag_for,
                ),
            )
        try:
            from tortoise.backends.psycopg.client import AsyncConnectionPool, PsycopgClient
        except ImportError:
            pass
        else:
            wrap(
                PsycopgClient,
                "create_pool",
                functools.partial(
                    wrap_create_pool,
                    seam="connection_class",
                    connect_time=connect_time,
                    tag_for=self._tag_for,
                ),
            )
            methods = AsyncConnectionPool.__dict__
            if "acquire" in methods and "release" in methods:
                acquire, release = psycopg_pool_guards(
                    methods["acquire"], methods["release"], self._shielded
                )
                self._patch(AsyncConnectionPool, "acquire", acquire)
                self._patch(AsyncConnectionPool, "release", release)
            else:
                missing.append("AsyncConnectionPool.acquire/release")
        return missing

    def _patch_acquire(self, seam: Seam) -> None:
        cls, entry = seam.cls, seam.entry
        # Where Tortoise's own exit would lose the connection (0.21), the entry's runs.
        leave = entry.exit or cls.__dict__["__aexit__"]
        if entry.ensure is not None:  # (to 0.23) Tortoise's would create a second pool
            self._patch(cls, "ensure_connection", _as_method(entry.ensure))
        self._patch(cls, "__aenter__", wrap_acquire(cls.__dict__["__aenter__"], entry, self))
        self._patch(cls, "__aexit__", wrap_release(leave, entry, self, trims=seam.trims))

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


def _as_method(function: AsyncMethod) -> AsyncMethod:
    """A plain function calling ``function`` (a bound method), to set on a class."""

    async def method(self: Any, *args: Any) -> Any:
        return await function(self, *args)

    return method


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
