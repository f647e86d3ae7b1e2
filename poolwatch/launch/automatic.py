"""What ``poolwatch run`` instruments in one process, and with which PoolWatch.

The hooks (:mod:`poolwatch.launch.hooks`) report what the app does: an ASGI app being
built (its first lifespan event or request), an engine created, Tortoise initialised.
:class:`Automatic` decides:

* **An app** gets poolwatch's middleware (and ``GET /metrics``) from the automatic
  PoolWatch, unless it has poolwatch's middleware already (the app called
  ``instrument_app``): then nothing is added, and that app's PoolWatch takes the engines
  and Tortoise the app did not instrument itself, so its ``/metrics`` shows them. An app
  first built inside a request poolwatch already times is mounted in another (or wrapped
  by ``watch.wrap``): left alone, its requests are the outer one's, and so are the
  engines when that one is the app's own.
* **Engines** created before the first app is built (module-level ones) wait for it, so
  the app's own ``instrument_sqlalchemy`` calls, which come with the app, go first;
  later ones are instrumented on the next turn of the event loop (the line after
  ``create_async_engine`` in a lifespan may instrument it itself), or at once outside
  one. Each is named by :mod:`poolwatch.launch.names`.
* **Tortoise** is instrumented once, when it is first initialised.

Everything is instrumented with ``automatic=True``: what the app instruments itself
stays the app's, and an explicit call later takes over (see ``PoolWatch``). Nothing here
may stop the app: a ``ConfigError`` is logged and the app runs without that part.
"""

from __future__ import annotations

import asyncio
import logging
import sys
import threading
import weakref
from collections.abc import Mapping
from typing import Any

from poolwatch.agent import PoolWatch
from poolwatch.context import current_scope
from poolwatch.errors import ConfigError
from poolwatch.exposition.middleware import ASGIApp, PoolWatchMiddleware, Receive, Scope, Send
from poolwatch.launch.names import PoolNames, candidates, engine_name

__all__ = ["POOL_NAMES", "Automatic", "SkipWhenTimed"]

logger = logging.getLogger("poolwatch")

POOL_NAMES = "_POOLWATCH_RUN_POOLS"  # what --pool-name said (PoolNames' text form)
_MAX_SUFFIX = 1000


class SkipWhenTimed:
    """Stands before the middleware of an app poolwatch run instrumented: a request that a
    poolwatch middleware already times (the app is mounted in one that has it, or wrapped
    by ``watch.wrap``) goes past it, so it is counted once."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app
        self._past = app.app if isinstance(app, PoolWatchMiddleware) else app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        work = current_scope()
        if work is not None and work.owner is not None and scope["type"] == "http":
            await self._past(scope, receive, send)
        else:
            await self.app(scope, receive, send)


def explicit_owner(app: Any) -> tuple[bool, PoolWatch | None]:
    """Whether ``app`` has poolwatch's middleware already, and whose."""
    for middleware in getattr(app, "user_middleware", ()):
        if getattr(middleware, "cls", None) is PoolWatchMiddleware:
            options = getattr(middleware, "kwargs", None) or getattr(middleware, "options", {})
            owner = options.get("owner")
            return True, owner if isinstance(owner, PoolWatch) else None
    return False, None


def _inheriting() -> bool:
    """Whether this is a spawned child running its parent's ``__main__`` again
    (multiprocessing's ``__mp_main__``): the engines made there are the parent's, not
    the ones the worker serves with."""
    process = sys.modules.get("multiprocessing.process")
    if process is None:
        return False
    # Private: set by multiprocessing.spawn while it prepares the child.
    return bool(getattr(process.current_process(), "_inheriting", False))


class Automatic:
    """One process's automatic instrumentation (see the module's docstring)."""

    def __init__(self, environ: Mapping[str, str]) -> None:
        try:
            self.names = PoolNames.parse(environ.get(POOL_NAMES, ""))
        except ValueError as exc:
            logger.warning("poolwatch run: %s: %s; pools keep their own names", POOL_NAMES, exc)
            self.names = PoolNames()
        self._lock = threading.RLock()
        self._watch: PoolWatch | None = None  # made on first need
        self._failed = False
        # The PoolWatch of the app's own middleware, if the first app built has one.
        self.target: PoolWatch | None = None
        self.started = False  # an app was built: the app's own module has run
        self._pending: list[weakref.ref[Any]] = []
        self._tortoise_pending = False
        self._engines: weakref.WeakSet[Any] = weakref.WeakSet()  # handled already
        self._apps: weakref.WeakSet[Any] = weakref.WeakSet()

    @property
    def watch(self) -> PoolWatch | None:
        """The automatic PoolWatch (settings from ``POOLWATCH_*``), made on first use;
        None if its settings are refused (logged once)."""
        with self._lock:
            if self._watch is None and not self._failed:
                try:
                    self._watch = PoolWatch()
                except ConfigError as exc:
                    self._failed = True
                    logger.error("poolwatch run: %s; the app runs without poolwatch", exc)
            return self._watch

    def _owner(self) -> PoolWatch | None:
        return self.target or self.watch

    # -- apps ----------------------------------------------------------------------------

    def app_building(self, app: Any) -> None:
        """``app`` (Starlette or FastAPI) builds its middleware stack: it starts."""
        with self._lock:
            if app in self._apps:
                return
            self._apps.add(app)
        work = current_scope()
        owner: object = None
        if work is not None and work.owner is not None:
            # Mounted in (or wrapped by) an app whose poolwatch middleware times this
            # request: its requests are that one's.
            owner = work.owner
        else:
            has_middleware, owner = explicit_owner(app)
            if not has_middleware:
                self._instrument_app(app)
        with self._lock:
            if self.target is None and isinstance(owner, PoolWatch) and not self.started:
                self.target = owner  # the app's own: it takes what the app left
        self._start()

    def _instrument_app(self, app: Any) -> None:
        watch = self.watch
        if watch is None:
            return
        try:
            watch.instrument_app(app)
        except ConfigError as exc:
            logger.error("poolwatch run: %s is left as it is: %s", type(app).__name__, exc)
            return
        if explicit_owner(app)[0]:
            app.add_middleware(SkipWhenTimed)

    def _start(self) -> None:
        with self._lock:
            if self.started:
                return
            self.started = True
            pending, self._pending = self._pending, []
            tortoise, self._tortoise_pending = self._tortoise_pending, False
        for ref in pending:
            engine = ref()
            if engine is not None:
                self._instrument_engine(engine)
        if tortoise:
            self._instrument_tortoise()

    # -- engines -------------------------------------------------------------------------

    def engine_created(self, engine: Any) -> None:
        """A SQLAlchemy engine (sync, or an ``AsyncEngine``'s) was created."""
        engine = getattr(engine, "sync_engine", engine)
        with self._lock:
            if engine in self._engines or _inheriting():
                return
            if not self.started:
                self._pending.append(weakref.ref(engine))
                return
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            self._instrument_engine(engine)
        else:
            loop.call_soon(self._instrument_later, weakref.ref(engine))

    def _instrument_later(self, ref: weakref.ref[Any]) -> None:
        engine = ref()
        try:
            if engine is not None:
                self._instrument_engine(engine)
        except Exception:  # on the app's event loop: never let it see ours
            logger.exception("poolwatch run: instrumenting an engine failed; the app goes on")

    def _instrument_engine(self, engine: Any) -> None:
        with self._lock:
            if engine in self._engines:
                return
            self._engines.add(engine)
        watch = self._owner()
        if watch is None:
            return
        found = engine_name(engine)
        for name in candidates(self.names.rename(found)):
            try:
                watch.instrument_sqlalchemy(engine, pool=name, automatic=True)
            except ConfigError as exc:
                if exc.setting == "pool" and not name.endswith(f"-{_MAX_SUFFIX}"):
                    continue  # a name another engine (or pool) has: the next one
                logger.error("poolwatch run: engine %r is left as it is: %s", found, exc)
            return

    # -- Tortoise ------------------------------------------------------------------------

    def tortoise_initialising(self) -> None:
        """Tortoise is being initialised (``Tortoise.init``, ``RegisterTortoise`` ...)."""
        with self._lock:
            if not self.started:
                self._tortoise_pending = True
                return
        self._instrument_tortoise()

    def _instrument_tortoise(self) -> None:
        watch = self._owner()
        if watch is None:
            return
        try:
            watch.instrument_tortoise(automatic=True)
        except ConfigError as exc:
            logger.error("poolwatch run: Tortoise is left as it is: %s", exc)
