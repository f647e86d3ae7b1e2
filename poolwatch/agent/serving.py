"""Where poolwatch's metrics and findings are served: the middleware on an app, an app's
own ``/metrics`` that poolwatch's metrics join, the endpoints, a port of their own."""

from __future__ import annotations

import errno
import logging
from typing import Any

from prometheus_client import REGISTRY

from poolwatch.agent.core import AgentCore
from poolwatch.errors import ConfigError
from poolwatch.exposition.endpoints import Exposition
from poolwatch.exposition.joining import Forwarder, JoinCheck, families_of, registry_served_at
from poolwatch.exposition.middleware import ASGIApp, PoolWatchMiddleware
from poolwatch.exposition.routes import app_answers

__all__ = ["Serving"]

logger = logging.getLogger("poolwatch")


class Serving(AgentCore):
    """The app's side of a :class:`~poolwatch.PoolWatch`: its middleware and endpoints."""

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
