"""``PoolWatch``: the one place that wires settings, metrics, adapters and middleware."""

from __future__ import annotations

import errno
import functools
import logging
import os
import weakref
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any, NamedTuple

from prometheus_client import (
    REGISTRY,
    CollectorRegistry,
    GCCollector,
    PlatformCollector,
    ProcessCollector,
)

from poolwatch import context
from poolwatch.config import Settings
from poolwatch.context import WorkScope
from poolwatch.errors import ConfigError, NPlusOneError, PoolWatchError
from poolwatch.events import PoolEvents, PoolProbe
from poolwatch.exposition.collectors import PoolStateCollector
from poolwatch.exposition.endpoints import Exposition
from poolwatch.exposition.joining import (
    Forwarder,
    JoinCheck,
    families_of,
    registry_served_at,
)
from poolwatch.exposition.metrics import Metrics
from poolwatch.exposition.middleware import ASGIApp, PoolWatchMiddleware, Switch
from poolwatch.exposition.multiprocess import SharedFiles, multiprocess_dir, share_files
from poolwatch.exposition.routes import app_answers
from poolwatch.pools.held_idle import HeldIdleReport
from poolwatch.pools.observer import PoolObserver
from poolwatch.pools.registry import PoolRegistry
from poolwatch.queries.detect import Evidence
from poolwatch.queries.eagerwatch import EagerWatch
from poolwatch.queries.frames import register_relation_namer
from poolwatch.queries.recorder import QueryRecorder
from poolwatch.queries.suggestions import register_pool, relation_target, suggestion
from poolwatch.safety import FaultReporter
from poolwatch.sizing.appname import new_tag
from poolwatch.sizing.gate import Gate
from poolwatch.sizing.guards import Guards
from poolwatch.sizing.settings import Autosize

if TYPE_CHECKING:
    from poolwatch.exposition.server import MetricsServer

__all__ = ["PoolWatch"]

logger = logging.getLogger("poolwatch")


def _add_process_collectors(registry: CollectorRegistry) -> None:
    """What prometheus_client's default registry serves: ``process_*``, ``python_gc_*``,
    ``python_info``, which users expect on any Python app's metrics endpoint."""
    ProcessCollector(registry=registry)
    PlatformCollector(registry=registry)
    GCCollector(registry=registry)


class _EnginePool(NamedTuple):
    """A SQLAlchemy engine instrumented under a pool name, and with which settings."""

    instrumentation: Any  # SQLAlchemyInstrumentation, imported only when SQLAlchemy is used
    sizing: Autosize | None


def _engine_collected(watch: weakref.ref[PoolWatch], pool: str, instrumentation: Any) -> None:
    """An engine the app let go was collected, or its automatic instrumentation gave way
    to an explicit one: its pool name is free, its gauges gone. (Weakly bound: a
    module-level engine must not keep each PoolWatch of a test alive.)"""
    owner = watch()
    if owner is None:
        return
    current = owner._engines.get(pool)
    if current is not None and current.instrumentation is instrumentation:
        try:
            owner._release_pool(pool)
        except Exception as exc:
            owner.faults.report("sqlalchemy", exc)


class PoolWatch:
    """Connection-pool and query metrics for one application.

    ::

        watch = PoolWatch()                      # POOLWATCH_* environment, then arguments
        watch.instrument_app(app)                # ASGI middleware and GET /metrics
        watch.instrument_tortoise()              # every Tortoise connection
        watch.instrument_sqlalchemy(engine, pool="main")
        ...
        watch.uninstrument()                     # undo all of it

    Each PoolWatch owns a ``CollectorRegistry`` (unless ``registry=`` or
    ``use_global_registry=True`` says otherwise), so two apps in one process, and tests,
    do not collide.
    """

    def __init__(
        self,
        settings: Settings | None = None,
        *,
        registry: CollectorRegistry | None = None,
        **overrides: Any,
    ) -> None:
        if settings is not None and overrides:
            raise ConfigError(
                "settings", settings, "pass either a Settings object or keyword settings"
            )
        self.settings = settings or Settings.from_env(os.environ, **overrides)
        shared_dir = multiprocess_dir(os.environ)
        if not self.settings.enabled:
            # Disabled registers nothing anywhere, not even in a registry it was handed.
            registry, shared_dir = CollectorRegistry(auto_describe=False), None
        elif registry is None:
            if self.settings.use_global_registry:
                registry = REGISTRY
            else:
                registry = CollectorRegistry()
                if shared_dir is None:  # a scrape renders the workers' files instead
                    _add_process_collectors(registry)
        self.registry = registry
        try:
            self.metrics = Metrics(registry, multiprocess=shared_dir is not None)
        except ValueError as exc:  # prometheus_client: "Duplicated timeseries"
            raise ConfigError(
                "registry",
                registry,
                "already holds poolwatch's metrics; give each PoolWatch its own registry",
            ) from exc
        self.faults = FaultReporter(self.metrics.count_internal_error)
        self.recorder = QueryRecorder(self.settings, self.metrics, self._suggest, self._target)
        # What the adapters' eager-load hooks ask: is this scope judged, from where.
        self._eager = EagerWatch(
            lambda: self.recorder.active, self.recorder.finder.find_path, self.faults
        )
        self.guards = Guards(
            self.settings,
            self.metrics,
            self.faults,
            self.recorder.finder,
            lambda: list(self._observers.values()),
        )
        self.pools = PoolRegistry(limit_of=self.guards.limit_of)
        self._observers = self.pools.observers  # by pool name (tests read it too)
        self.guards.maintenance.drifts = self.pools.drifts
        self._undo: list[Callable[[], None]] = []
        # SQLAlchemy engines by pool name, and what undoes each one's instrumentation.
        self._engines: dict[str, _EnginePool] = {}
        self._pool_undo: dict[str, list[Callable[[], None]]] = {}
        self._switch = Switch()
        # Instrumented by instrument_app, each once; weakly: an app factory called per test
        # must not keep every app it made alive.
        self._apps: weakref.WeakSet[Any] = weakref.WeakSet()
        # Registries of apps' own /metrics that poolwatch's metrics joined, each once.
        self._joined: list[CollectorRegistry] = []
        self._server: MetricsServer | None = None
        self._shared: SharedFiles | None = None
        self._render_registry: Callable[[], CollectorRegistry] = lambda: registry
        if shared_dir is None:
            registry.register(
                PoolStateCollector(self.pools.sources, self.metrics.count_internal_error)
            )
        else:
            shared = self._shared = share_files(
                registry, shared_dir, self.metrics.count_internal_error, self.pools.sources
            )
            self._render_registry = shared.render
            self._undo.append(shared.refresher.stop)
        self._scope_children: dict[str, Any] = {}

    # -- pools -------------------------------------------------------------------------

    def pool_events(self, name: str) -> PoolEvents:
        """The event sink of the pool called ``name`` (created on first use).

        This is what adapters report to; a custom adapter can use it too.
        """
        observer = self._observers.get(name)
        if observer is None:
            on_change = None
            shared = self._shared
            if shared is not None:  # multiprocess: other workers read these from files

                def on_change() -> None:
                    shared.gauges.write(self.pools.source(name))
                    shared.refresher.ensure()

            observer = self._observers[name] = PoolObserver(
                name, self.metrics, self.faults, self.recorder, on_change
            )
            observer.on_held_idle = HeldIdleReport(self.recorder, self.faults, name)
            self.guards.observe(observer)
        return observer

    def set_pool_probe(self, name: str, probe: PoolProbe) -> None:
        """Read the pool called ``name`` with ``probe`` at scrape time."""
        self.pool_events(name)
        self.pools.probes[name] = probe

    def findings(self) -> list[dict[str, Any]]:
        """The recent findings, newest first, as served on ``findings_path``."""
        return self.recorder.recent.recent()

    def _forget_probe(self, name: str) -> None:
        self.pools.probes.pop(name, None)

    # -- instrumentation ---------------------------------------------------------------

    def instrument_app(self, app: Any) -> Any:
        """Add the ASGI middleware (and ``GET /metrics``) to a Starlette or FastAPI app.

        Returns ``app``. For any other ASGI callable use :meth:`wrap`.
        """
        if not self.settings.enabled:
            return app
        add_middleware = getattr(app, "add_middleware", None)
        if add_middleware is None:
            raise TypeError(
                f"instrument_app() needs a Starlette/FastAPI app, got {type(app).__name__}; "
                "wrap other ASGI apps with watch.wrap(app)"
            )
        if app in self._apps:
            # Its middleware is in place: a second one would count every request twice.
            self._activate()
            return app
        joined = self._join_apps_metrics(app)
        add_middleware(PoolWatchMiddleware, **self._middleware_options(joined))
        self._apps.add(app)
        return app

    def _join_apps_metrics(self, app: Any) -> JoinCheck | None:
        """An app that serves its own ``metrics_path`` keeps it, and it shows poolwatch's
        metrics too: they join the registry it renders. Its own ``findings_path`` cannot
        be shared (a JSON list is no registry): that one is refused, with the way out."""
        settings = self.settings
        if settings.metrics_port is not None:
            return None  # the app's port serves none of poolwatch's paths
        if settings.expose_findings and app_answers(app, settings.findings_path):
            raise ConfigError(
                "findings_path",
                settings.findings_path,
                "is a route the app already has; serve poolwatch's findings on another "
                f"path (findings_path='/poolwatch{settings.findings_path}')",
            )
        path = settings.metrics_path
        if not settings.expose_metrics or not app_answers(app, path):
            return None
        target = registry_served_at(app, path)
        if self._shared is not None:
            how = "its multiprocess files (PROMETHEUS_MULTIPROC_DIR), which it renders"
        elif target is self.registry:
            how = "the registry it renders, which is poolwatch's own"
        else:
            if not any(registry is target for registry in self._joined):
                forwarder = Forwarder(self.registry, taken=families_of(target))
                target.register(forwarder)
                self._joined.append(target)
                self._undo.append(lambda: target.unregister(forwarder))
            name = "prometheus_client's global REGISTRY" if target is REGISTRY else "its registry"
            how = f"{name}, which it renders"
        logger.info(
            "poolwatch: the app serves its own %s; poolwatch's metrics joined %s: one "
            "endpoint shows both (to serve poolwatch's apart: metrics_path='/poolwatch%s')",
            path,
            how,
            path,
        )
        return JoinCheck(path)

    def wrap(self, app: ASGIApp) -> ASGIApp:
        """Wrap any ASGI application in the middleware."""
        if not self.settings.enabled:
            return app
        return PoolWatchMiddleware(app, **self._middleware_options())

    def _middleware_options(self, joined: JoinCheck | None = None) -> dict[str, Any]:
        settings = self.settings
        exposition = None
        if settings.metrics_port is None:
            exposition = self.exposition(metrics=joined is None)
        else:
            # First: a port it cannot listen on leaves nothing installed.
            self.start_metrics_server()  # the app's own port serves none of it
        self._activate()  # requests end through this PoolWatch's scope listener
        return {
            "metrics": self.metrics,
            "faults": self.faults,
            "exposition": exposition,
            "owner": self,
            "exclude_paths": frozenset(settings.exclude_paths),
            "switch": self._switch,
            "exemplars": settings.exemplars and self._shared is None,
            "on_shutdown": self.guards.maintenance.stop,
            "joined": joined,
        }

    def exposition(self, *, metrics: bool = True) -> Exposition:
        """What answers ``metrics_path`` and ``findings_path``, for any HTTP server
        (``metrics=False``: the findings only, the app serving the metrics itself)."""
        settings = self.settings
        return Exposition(
            registry=self._render_registry,
            findings=self.findings,
            faults=self.faults,
            metrics_path=settings.metrics_path if settings.expose_metrics and metrics else None,
            findings_path=settings.findings_path if settings.expose_findings else None,
            bearer_token=settings.metrics_bearer_token,
            basic_auth=settings.metrics_basic_auth,
        )

    def start_metrics_server(
        self, port: int | None = None, host: str | None = None
    ) -> tuple[str, int]:
        """Serve poolwatch's paths on a port of their own; returns the bound address.

        ``port`` and ``host`` default to the ``metrics_port`` and ``metrics_host``
        settings (``port=0`` picks a free port). :meth:`uninstrument` stops the server.
        Under gunicorn with several workers, call it in the master (``when_ready``), not
        in each worker: see ``examples/gunicorn.conf.py``.
        """
        if self._server is not None:
            return self._server.address
        from poolwatch.exposition.server import (
            MetricsServer,  # its own thread and loop: only when asked
        )

        port = self.settings.metrics_port if port is None else port
        if port is None:
            raise ConfigError("metrics_port", None, "give a port to serve metrics on")
        host = host or self.settings.metrics_host
        try:
            server = MetricsServer(self.exposition(), host, port)
        except OSError as exc:
            if exc.errno != errno.EADDRINUSE:
                raise ConfigError(
                    "metrics_port", port, f"cannot listen on {host}:{port} ({exc.strerror})"
                ) from exc
            if self._shared is None:
                raise ConfigError(
                    "metrics_port",
                    port,
                    f"cannot listen on {host}:{port}: the port is in use. Several workers "
                    "(uvicorn --workers, gunicorn) can share it only in multiprocess mode "
                    "(PROMETHEUS_MULTIPROC_DIR), where any one of them serves the sum of "
                    "all; otherwise choose a free port",
                ) from exc
            # Multiprocess mode: another worker serves every worker's metrics; stand by to
            # take over if it goes away.
            server = MetricsServer(self.exposition(), host, port, standby=True)
        server.start()
        self._server = server

        def stop() -> None:
            server.stop()
            self._server = None

        self._undo.append(stop)
        return server.address

    def _activate(self) -> None:
        self._switch.on = True
        if self._scope_closed not in context._scope_listeners:
            context.add_scope_listener(self._scope_closed)

    def instrument_tortoise(
        self,
        *,
        autosize: Autosize | bool | Mapping[str, Any] | None = None,
        automatic: bool = False,
    ) -> None:
        """Instrument every Tortoise-ORM connection, on every backend.

        Call it before or after ``Tortoise.init``; connections are picked up on first use
        and labelled with their connection name (``pool="default"``).

        ``autosize=True`` (or an :class:`Autosize`, or a dict of its fields) lets poolwatch
        set each pooled connection's effective size at run time, between ``min`` and the
        ``maxsize`` the connection was configured with (create it at the most you would
        ever allow). SQLite has no pool to size and is left as it is.

        ``automatic=True`` is how ``poolwatch run`` calls it: nothing happens if any
        PoolWatch instruments Tortoise already, and an explicit call later (of this
        PoolWatch or another) takes over.
        """
        sizing = Autosize.coerce(autosize)  # bad settings fail here, before any request
        if not self.settings.enabled:
            return
        from poolwatch.adapters.tortoise import (
            TortoiseInstrumentation,
            open_connections,
            postgres_limits_reader,
            read_pool_state,
        )

        if automatic and TortoiseInstrumentation.installed() is not None:
            return  # instrumented already, explicitly or automatically: that one stays
        clients: dict[str, Any] = {}

        from poolwatch.adapters.tortoise.relations import tortoise_relations

        def on_client(name: str, client: Any) -> None:
            first = name not in clients
            clients[name] = client
            if first:
                self.set_pool_probe(name, lambda: read_pool_state(clients[name]))
                register_pool(name, "tortoise", tortoise_relations)

        def gate_for(name: str, client: Any) -> Gate | None:
            pool_max = getattr(client, "pool_maxsize", None)
            pooled = isinstance(pool_max, int) and not isinstance(pool_max, bool)
            reader = postgres_limits_reader(client, lambda: clients[name])
            return self.guards.gate_for(
                self._observers[name],
                autosize=sizing if pooled else None,
                pool_max=pool_max if pooled else None,
                # The latest client of that name: Tortoise may be initialised again.
                open_connections=lambda: open_connections(clients[name]),
                read_limits=reader,
                # A pool opened before poolwatch has no tag: the first read says so.
                tag=tag_for(name) if reader is not None else None,
                keep=int(getattr(client, "pool_minsize", 0) or 0),
            )

        # One tag per connection name, kept when Tortoise is initialised again.
        tags: dict[str, str] = {}

        def tag_for(name: str) -> str | None:
            if sizing is None or not sizing.tags_connections:
                return None
            return tags.setdefault(name, new_tag())

        instrumentation = TortoiseInstrumentation(
            self.pool_events,
            on_client,
            gate_for,
            tag_for=tag_for,
            automatic=automatic,
            eager=self._eager,
        )

        def on_yield() -> None:  # an explicit instrumentation took over: stop reading
            for name in clients:
                self._forget_probe(name)

        instrumentation.on_yield = on_yield
        instrumentation.install()
        self._activate()
        self._undo.append(instrumentation.uninstall)

    def instrument_sqlalchemy(
        self,
        engine: Any,
        *,
        pool: str = "main",
        autosize: Autosize | bool | Mapping[str, Any] | None = None,
        automatic: bool = False,
    ) -> None:
        """Instrument a SQLAlchemy ``Engine`` or ``AsyncEngine``; ``pool`` is its label.

        ``autosize`` (see :meth:`instrument_tortoise`) needs a ``QueuePool`` (the default
        pool of a server database): its effective size then moves between ``min`` and
        ``pool_size + max_overflow``. The acquire timeout (``acquire_timeout``) applies to
        autosize's own wait; SQLAlchemy's ``pool_timeout`` still bounds the pool's.

        ``automatic=True`` is how ``poolwatch run`` calls it: an engine that any PoolWatch
        instruments already is left alone, and an explicit call later on this engine (of
        this PoolWatch or another, under any name) takes over.
        """
        sizing = Autosize.coerce(autosize)
        if not self.settings.enabled:
            return
        if not isinstance(pool, str) or not pool:
            raise ConfigError("pool", pool, "must be a non-empty string")
        from sqlalchemy.engine import Engine

        from poolwatch.adapters.sqlalchemy import (
            SQLAlchemyInstrumentation,
            pool_capacity,
            postgres_limits_reader,
            taggable,
        )
        from poolwatch.adapters.sqlalchemy.relations import (
            LAZY_LOADER_MODULE,
            lazy_loaded_relation,
            sqlalchemy_relations,
        )

        sync_engine = getattr(engine, "sync_engine", engine)
        if not isinstance(sync_engine, Engine):  # an AsyncEngine wraps one
            # Before any series is made: a failed call leaves nothing behind.
            raise ConfigError(
                "engine",
                type(engine).__name__,
                "must be a SQLAlchemy Engine or AsyncEngine (create_engine(), "
                "create_async_engine())",
            )
        sizable, ceiling = pool_capacity(getattr(sync_engine, "pool", None))
        if sizing is not None and not sizable:
            raise ConfigError(
                "autosize",
                autosize,
                f"needs a QueuePool; engine {pool!r} has a "
                f"{type(getattr(sync_engine, 'pool', None)).__name__}",
            )
        if sizing is not None:
            sizing.bounds(ceiling)  # max unknown with unlimited overflow: fail now
        if automatic and SQLAlchemyInstrumentation.owner_of(sync_engine) is not None:
            return  # instrumented already, explicitly or automatically: that one stays
        if self._name_taken(pool, sync_engine, sizing, automatic):
            return  # this very engine, instrumented so already: nothing to add
        existed = pool in self._observers
        instrumentation = SQLAlchemyInstrumentation(
            engine,
            self.pool_events(pool),
            self.faults,
            automatic=automatic,
            eager=self._eager.for_pool(pool),
        )
        # An explicit instrumentation of this engine took over: the name is free.
        instrumentation.on_yield = functools.partial(
            _engine_collected, weakref.ref(self), pool, instrumentation
        )
        if sizing is not None:
            if sizing.tags_connections and taggable(engine):
                instrumentation.tag = new_tag()

            instrumentation.gate = self.guards.gate_for(
                self._observers[pool],
                autosize=sizing,
                pool_max=ceiling,
                open_connections=instrumentation.open_connections,
                read_limits=postgres_limits_reader(engine),
                tag=instrumentation.tag,
                threads=not sync_engine.dialect.is_async,
            )
        try:
            instrumentation.install()
        except BaseException:
            if not existed:  # leave no empty pool series behind a failed install
                self._observers.pop(pool, None)
            self.guards.forget(pool)
            raise
        self.set_pool_probe(pool, instrumentation.probe)
        register_pool(pool, "sqlalchemy", sqlalchemy_relations)
        register_relation_namer(LAZY_LOADER_MODULE, lazy_loaded_relation)
        self._activate()
        self._engines[pool] = _EnginePool(instrumentation, sizing)
        if pool not in self._pool_undo:
            self._undo.append(functools.partial(self._release_pool, pool))
        self._pool_undo[pool] = [
            instrumentation.uninstall,
            lambda: self._forget_probe(pool),
            lambda: self.guards.forget(pool),
        ]
        watch = weakref.ref(self)
        weakref.finalize(sync_engine, _engine_collected, watch, pool, instrumentation)

    def _name_taken(
        self, pool: str, engine: Any, sizing: Autosize | None, automatic: bool = False
    ) -> bool:
        """Whether ``engine`` is already instrumented as ``pool`` (True: nothing to do),
        after handing the name on if its last engine is done with; raises if another
        engine still uses the name.

        An app that builds an engine per test (and disposes it) instruments each one
        under the same name; an app factory called per test instruments the same
        module-level engine again. Neither may fail, nor pile up series.
        """
        previous = self._engines.get(pool)
        if previous is None:
            if pool in self.pools.probes:  # set by hand (set_pool_probe): not an engine's
                raise ConfigError("pool", pool, "is already a pool of this PoolWatch")
            return False
        if previous.instrumentation.engine is engine:
            if previous.instrumentation.automatic and not automatic:
                self._release_pool(pool)  # instrumented again as the app asks
                return False
            if previous.sizing != sizing:
                raise ConfigError(
                    "autosize",
                    sizing,
                    f"differs from what engine {pool!r} was instrumented with "
                    f"({previous.sizing}); instrument an engine with one setting",
                )
            return True
        observer = self._observers.get(pool)
        idle = observer is None or (observer.checked_out() == 0 and observer.pending() == 0)
        if not (previous.instrumentation.gone() and idle):
            raise ConfigError(
                "pool",
                pool,
                "is the name of another engine still in use; give each engine its own name "
                "(an engine disposed, or garbage-collected, hands its name on)",
            )
        self._release_pool(pool)
        return False

    def _release_pool(self, pool: str) -> None:
        """Undo what instrumenting pool ``pool``'s engine did (its observer and series
        stay: the name goes on)."""
        self._engines.pop(pool, None)
        for undo in reversed(self._pool_undo.pop(pool, [])):
            undo()

    def uninstrument(self) -> None:
        """Undo every ``instrument_*`` call; the middleware becomes a pass-through."""
        self._switch.on = False
        errors: list[BaseException] = []
        while self._undo:
            try:
                self._undo.pop()()
            except Exception as exc:
                errors.append(exc)
        context.remove_scope_listener(self._scope_closed)
        self.guards.maintenance.stop_soon()
        if errors:
            raise PoolWatchError(f"uninstrument left {len(errors)} error(s)") from errors[0]

    def _scope_closed(self, work: WorkScope) -> None:
        if work.owner is not None and work.owner is not self:
            return  # a request of another PoolWatch's middleware
        try:
            if work.owner is None:  # a scope() block; the middleware times requests
                route = work.route
                child = self._scope_children.get(route)
                if child is None:
                    child = self._scope_children[route] = self.metrics.request_queries.labels(route)
                child.observe(work.queries)
            self.recorder.scope_closed(work)
        except NPlusOneError:
            raise
        except Exception as exc:
            self.faults.report("scope", exc)

    def _suggest(self, evidence: Evidence) -> str:
        return suggestion(evidence, self._hint_fault)

    def _target(self, pool: str, relation: str) -> str | None:
        return relation_target(pool, relation, self._hint_fault)

    def _hint_fault(self, exc: BaseException) -> None:
        self.faults.report("hints", exc)
