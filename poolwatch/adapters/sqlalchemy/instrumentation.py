"""SQLAlchemyInstrumentation: installs the adapter's hooks on one engine, and removes them.

The hooks themselves are made in :mod:`.statements`, :mod:`.transactions` and :mod:`.pool`;
this module puts them in place: on the engine's dialect *instance* and pool *instance*
(instance attributes shadowing the class's methods, each one recorded to be put back at
uninstall), and as pool listeners registered on an anchor pool of ours, copied into the
engine's pool and carried by ``recreate()`` into every pool after it.

Touch private attributes in one function only, with a version check and a test: the
hooks are put on SQLAlchemy's private attributes by one method,
:meth:`SQLAlchemyInstrumentation._hook_pool`, tested on the versions in ``SUPPORTED``
(:meth:`~SQLAlchemyInstrumentation.install` logs a warning on any other). Of the hooks it
installs, only the ``_do_return_conn`` wrapper (:func:`.pool.returning`) calls a private
method, the pool's ``_dec_overflow``, when it has one. Elsewhere SQLAlchemy's private
attributes are only read: by :func:`.pool.read_pool_state`, at scrape time, and by
:mod:`.relations`.
"""

from __future__ import annotations

import logging
import weakref
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, ClassVar, NamedTuple

import sqlalchemy
from sqlalchemy import event
from sqlalchemy.engine import Dialect, Engine
from sqlalchemy.pool import NullPool, Pool

from poolwatch import forksafe
from poolwatch.adapters import major_minor
from poolwatch.adapters.sqlalchemy.budget import tag_parameters
from poolwatch.adapters.sqlalchemy.eager import hooks as eager_hooks
from poolwatch.adapters.sqlalchemy.pool import (
    following_recreate,
    marking_creator,
    pool_listeners,
    read_pool_state,
    returning,
    timed_acquire,
)
from poolwatch.adapters.sqlalchemy.statements import EXECUTE_METHODS, timed_statement
from poolwatch.adapters.sqlalchemy.transactions import (
    ENDS,
    TRANSACTION_END_METHODS,
    transaction_begin,
    transaction_end,
)
from poolwatch.errors import PoolWatchError
from poolwatch.events import PoolEvents, PoolState
from poolwatch.queries.eagerwatch import EagerWatch
from poolwatch.queries.fingerprint import dialect_of
from poolwatch.safety import FaultReporter
from poolwatch.sizing.gate import Gate

if TYPE_CHECKING:
    from sqlalchemy.ext.asyncio import AsyncEngine

__all__ = ["SUPPORTED", "SQLAlchemyInstrumentation", "sqlalchemy_version"]

logger = logging.getLogger("poolwatch")

SUPPORTED = ((2, 0), (2, 2))  # [from, to): the versions whose internals this was tested on

_MISSING = object()


class _Shadow(NamedTuple):
    """An instance attribute poolwatch set, and what to put back."""

    target: weakref.ref[Any]
    name: str
    # Not the wrapper itself: it closes over the target, and holding it would keep every
    # pool that Engine.dispose() retired alive. While the target lives, its __dict__
    # holds the wrapper, so the id cannot be reused.
    replacement_id: int
    previous: Any  # _MISSING when the class attribute showed through


def sqlalchemy_version() -> tuple[int, int]:
    """SQLAlchemy's ``(major, minor)``."""
    return major_minor(sqlalchemy.__version__)


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
    time; :meth:`install` raises :class:`~poolwatch.errors.PoolWatchError` otherwise,
    except over an ``automatic`` one (what ``poolwatch run`` installs), which gives way
    to an explicit one: see :meth:`give_way`.
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
        *,
        automatic: bool = False,
        eager: EagerWatch | None = None,
    ) -> None:
        sync_engine = getattr(engine, "sync_engine", engine)
        if not isinstance(sync_engine, Engine):
            raise TypeError(
                "instrument_sqlalchemy() needs a SQLAlchemy Engine or AsyncEngine, "
                f"got {type(engine).__name__}"
            )
        # Weakly: an app that builds an engine per test and drops it must be able to let
        # it go; what poolwatch keeps of it is then gone() (see the agent's takeover).
        self._engine_ref = weakref.ref(sync_engine)
        self._events = events
        self._faults = faults
        # Autosize's limiter and the acquire timeout, set before install; see _gated.
        self.gate = gate
        # The application_name tag of the engine's new connections (autosize's budget).
        self.tag = tag
        # Checkouts holding a permit of the gate's limiter (their record_info ids).
        self._permits: set[int] = set()
        # Checkouts checked in and not yet back in the pool (their record_info ids).
        self._returning: set[int] = set()
        # DBAPI connections (their ids) with a transaction open (do_begin), since when.
        self._opened: dict[int, float] = {}
        # Connections being opened right now (the creator called, not yet returned).
        self.connecting = 0
        # Set by Engine.dispose() (the pool's recreate), cleared by the next acquire: a
        # disposed pool has no gauges until it is used again.
        self.retired = False
        self._active = False
        self._shadows: list[_Shadow] = []
        # The pool listeners are registered on this empty pool of ours and copied into
        # the engine's; see _hook_pool.
        self._anchor: Pool | None = None
        self._listeners: tuple[tuple[str, Callable[..., None]], ...] = ()
        # Installed without the app asking (``poolwatch run``): the app's own explicit
        # instrumentation of this engine takes over, and on_yield tells our owner.
        self.automatic = automatic
        self.on_yield: Callable[[], None] | None = None
        # Eager loads of the engine's ORM statements (unused_eager_load), if judged.
        self.eager = eager
        forksafe.forget_in_child(self)

    @classmethod
    def owner_of(cls, engine: Engine | AsyncEngine) -> SQLAlchemyInstrumentation | None:
        """The instrumentation that hooked ``engine`` now, if any."""
        sync_engine = getattr(engine, "sync_engine", engine)
        for target in (sync_engine.dialect, sync_engine.pool):
            owner = cls._owners.get(target)
            if owner is not None:
                return owner
        return None

    @property
    def engine(self) -> Engine | None:
        """The (sync) engine, or ``None`` once the app let it go."""
        return self._engine_ref()

    def gone(self) -> bool:
        """Whether the engine is done with: garbage-collected, or disposed and not used
        since. (Whether a connection of it is still out is the observer's to say.)"""
        return self._engine_ref() is None or self.retired

    def _require_engine(self) -> Engine:
        engine = self._engine_ref()
        if engine is None:
            raise PoolWatchError("the engine was garbage-collected before it was instrumented")
        return engine

    def after_fork(self) -> None:
        """In a child process: the parent's checkouts and transactions are not the
        child's (see :mod:`poolwatch.forksafe`). Emptied in place: the hooks made at
        install hold these very objects."""
        self._permits.clear()
        self._returning.clear()
        self._opened.clear()

    # -- install / uninstall -------------------------------------------------------------

    def install(self) -> None:
        """Hook the engine. Raises if it is already instrumented, unless by an automatic
        instrumentation and this one is explicit: that one gives way first."""
        engine, events, faults = self._require_engine(), self._events, self._faults
        dialect, pool = engine.dialect, engine.pool
        for target in (dialect, pool):
            owner = self._owners.get(target)
            if owner is not None and owner.automatic and not self.automatic:
                owner.give_way()
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
            self._listeners = pool_listeners(self, events, faults)
            for name, listener in self._listeners:
                event.listen(self._anchor, name, listener)
            for method in EXECUTE_METHODS:
                self._shadow(
                    dialect,
                    method,
                    timed_statement(
                        getattr(dialect, method),
                        method != "do_execute_no_params",
                        self,
                        events,
                        faults,
                    ),
                )
            # A commit or rollback is a DBAPI call, no statement: duplicates end there,
            # and so do the transactions that do_begin opened.
            self._shadow(
                dialect,
                "do_begin",
                transaction_begin(dialect.do_begin, self, events, faults, opened=self._opened),
            )
            for method in TRANSACTION_END_METHODS:
                self._shadow(
                    dialect,
                    method,
                    transaction_end(
                        getattr(dialect, method),
                        ENDS.get(method),
                        self,
                        events,
                        faults,
                        opened=self._opened,
                    ),
                )
            self._events.dialect = dialect_of(dialect.name)
            if self.tag is not None:
                event.listen(engine, "do_connect", self._tag_connection)
            self._hook_pool(pool, adopt_listeners=True)
            if self.eager is not None:
                eager_hooks.add(engine, self.eager)
        except BaseException:
            self.uninstall()
            raise

    def give_way(self) -> None:
        """Hand the engine over to an explicit instrumentation: its owner is told
        (``on_yield``, once) and lets the pool go, and every hook comes off."""
        on_yield, self.on_yield = self.on_yield, None
        try:
            if on_yield is not None:
                on_yield()
        except Exception as exc:  # the explicit install goes on all the same
            self._faults.report("sqlalchemy", exc)
        self.uninstall()

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
        engine = self._engine_ref()
        if engine is not None and self.eager is not None:
            eager_hooks.remove(engine, self.eager)
        if engine is not None and event.contains(engine, "do_connect", self._tag_connection):
            event.remove(engine, "do_connect", self._tag_connection)
        anchor, self._anchor = self._anchor, None
        listeners, self._listeners = self._listeners, ()
        if anchor is not None:  # removes the copies in every pool too
            for name, listener in listeners:
                if event.contains(anchor, name, listener):
                    event.remove(anchor, name, listener)
        for target, owner in list(self._owners.items()):
            if owner is self:
                self._owners.pop(target, None)

    def probe(self) -> PoolState | None:
        """The engine's current pool, read now (see :func:`read_pool_state`)."""
        engine = self._engine_ref()
        if engine is None or self.retired:  # no pool to read right now
            return None
        return read_pool_state(engine.pool)

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
        events, faults = self._events, self._faults
        self._owners[pool] = self
        self._shadow(pool, "connect", timed_acquire(pool.connect, self, events, faults))
        self._shadow(
            pool, "recreate", following_recreate(pool.recreate, self, self._hook_pool, faults)
        )
        # A connection checked in is returning until the pool's own _do_return_conn is
        # over (see .pool.returning). With a limiter, its permit goes back then too, so
        # the pool never holds more than the limit; a connection returning to a pool
        # above its limit is closed instead, the way QueuePool itself drops one that
        # finds its queue full.
        self._shadow(
            pool,
            "_do_return_conn",
            returning(pool, pool._do_return_conn, self, events, faults),
        )
        creator = vars(pool).get("_invoke_creator")
        if callable(creator):
            self._shadow(pool, "_invoke_creator", marking_creator(creator, self, faults))

    def _shadow(self, target: Dialect | Pool, name: str, replacement: Callable[..., Any]) -> None:
        self._shadows = [s for s in self._shadows if s.target() is not None]
        previous = vars(target).get(name, _MISSING)
        setattr(target, name, replacement)
        self._shadows.append(_Shadow(weakref.ref(target), name, id(replacement), previous))
