"""What every part of the agent shares: the settings, the registry and metrics, the
query recorder, the pools' observers and guards, and the list of what undoes each
``instrument_*`` call.

The wiring of each ORM and of the metrics' endpoints builds on this (see the package's
docstring); nothing here knows an ORM or an HTTP server.
"""

from __future__ import annotations

import os
import weakref
from collections.abc import Callable
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
from poolwatch.exposition.metrics import Metrics
from poolwatch.exposition.middleware import Switch
from poolwatch.exposition.multiprocess import SharedFiles, multiprocess_dir, share_files
from poolwatch.pools.held_idle import HeldIdleReport
from poolwatch.pools.observer import PoolObserver
from poolwatch.pools.registry import PoolRegistry
from poolwatch.queries.detect import Evidence
from poolwatch.queries.eagerwatch import EagerWatch
from poolwatch.queries.recorder import QueryRecorder
from poolwatch.queries.suggestions import relation_target, suggestion
from poolwatch.safety import FaultReporter
from poolwatch.sizing.guards import Guards
from poolwatch.sizing.settings import Autosize

if TYPE_CHECKING:
    from poolwatch.exposition.server import MetricsServer

__all__ = ["AgentCore", "EnginePool"]


def _add_process_collectors(registry: CollectorRegistry) -> None:
    """What prometheus_client's default registry serves: ``process_*``, ``python_gc_*``,
    ``python_info``, which users expect on any Python app's metrics endpoint."""
    ProcessCollector(registry=registry)
    PlatformCollector(registry=registry)
    GCCollector(registry=registry)


class EnginePool(NamedTuple):
    """A SQLAlchemy engine instrumented under a pool name, and with which settings."""

    instrumentation: Any  # SQLAlchemyInstrumentation, imported only when SQLAlchemy is used
    sizing: Autosize | None


class AgentCore:
    """The state a :class:`~poolwatch.PoolWatch` is made of, and the parts of it that no
    ORM or server needs to know: pools by name, the scope listener, undoing it all."""

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
            lambda: self.recorder.active, self.recorder.find_path_here, self.faults
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
        self._engines: dict[str, EnginePool] = {}
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

    def _activate(self) -> None:
        self._switch.on = True
        if self._scope_closed not in context._scope_listeners:
            context.add_scope_listener(self._scope_closed)

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
