"""Plain ASGI middleware: times each request, binds its scope, serves poolwatch's paths.

``/metrics`` and ``/poolwatch/findings`` are answered by an :class:`Exposition` (auth,
format, gzip). Each request's scope ends here, which is when N+1 detection judges it. A
trace id (OpenTelemetry's current span, else a W3C ``traceparent`` header) rides along
as the exemplar of the request's and its statements' observations.

Plain ASGI rather than Starlette's ``BaseHTTPMiddleware``: the request's context variables
then reach the endpoint, the threadpool and background tasks, and streaming responses are
untouched. The request duration ends when the last body chunk is sent; background tasks
that run afterwards still count their queries towards the request.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, MutableMapping
from time import perf_counter
from typing import Any

from poolwatch import context
from poolwatch.context import WorkScope
from poolwatch.exposition.endpoints import Exposition
from poolwatch.exposition.joining import JoinCheck
from poolwatch.exposition.metrics import Metrics
from poolwatch.exposition.routes import RouteTemplates, app_answers, route_path
from poolwatch.exposition.tracing import trace_id_of
from poolwatch.safety import FaultReporter

__all__ = ["PoolWatchMiddleware", "Switch"]

logger = logging.getLogger("poolwatch")

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

# Any other method is reported as _OTHER (OpenTelemetry's convention) so a client
# inventing methods cannot create series.
_METHODS = frozenset(
    {"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS", "CONNECT", "TRACE"}
)


class Switch:
    """Whether the middleware instruments requests; off after ``uninstrument()``.

    An attribute rather than a callback: it is read on every request.
    """

    __slots__ = ("on",)

    def __init__(self) -> None:
        self.on = True


class _Request:
    """Per-request state shared with the ``send`` wrapper (cheaper than a closure cell)."""

    __slots__ = ("done", "send", "started", "status")

    def __init__(self, send: Send) -> None:
        self.send = send
        self.started = perf_counter()
        self.status = 0
        self.done = 0.0

    # A plain function handing back the server's own awaitable: no coroutine of ours is
    # created and awaited for each message sent.
    def __call__(self, message: Message) -> Awaitable[None]:
        kind = message["type"]
        if kind == "http.response.start":
            self.status = message["status"]
        elif kind == "http.response.body" and not message.get("more_body", False):
            self.done = perf_counter()
        return self.send(message)


class PoolWatchMiddleware:
    """Times HTTP requests and attributes the queries they issue to their route.

    Usually added by :meth:`PoolWatch.instrument_app`; for a bare ASGI app use
    :meth:`PoolWatch.wrap`.
    """

    def __init__(
        self,
        app: ASGIApp,
        *,
        metrics: Metrics,
        faults: FaultReporter,
        exposition: Exposition | None = None,
        exclude_paths: frozenset[str] = frozenset(),
        switch: Switch | None = None,
        owner: object = None,
        exemplars: bool = True,
        on_shutdown: Callable[[], Awaitable[None]] | None = None,
        joined: JoinCheck | None = None,
    ) -> None:
        self.app = app
        self._faults = faults
        self._exposition = exposition
        self._served = exposition.paths if exposition is not None else frozenset()
        # The app's own metrics endpoint, which poolwatch's metrics joined: the app serves
        # it, untimed, and its first response is read to see they are in it.
        self._joined = joined
        joined_paths = frozenset({joined.path}) if joined is not None else frozenset()
        self._excluded = exclude_paths | self._served | joined_paths
        self._switch = switch or Switch()
        self._owner = owner
        self._exemplars = exemplars
        self._on_shutdown = on_shutdown
        self._http = metrics.http_duration
        self._queries = metrics.request_queries
        self._http_children: dict[tuple[str, str, int], Any] = {}
        self._query_children: dict[str, Any] = {}
        # Bound on the first request, to the application Starlette names in the scope.
        self._templates: RouteTemplates | None = None
        self._owned: dict[str, bool] = {}  # poolwatch's paths: has the app its own route?

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not self._switch.on:
            if scope["type"] == "lifespan" and self._on_shutdown is not None:
                receive = self._lifespan_receive(receive, self._on_shutdown)
            await self.app(scope, receive, send)
            return
        path = route_path(scope)
        if path in self._excluded:
            if (
                path in self._served
                and self._exposition is not None
                and not self._app_owns(scope, path)
            ):
                await self._serve(scope, send, self._exposition, path)
            elif self._joined is not None and not self._joined.checked:
                await self.app(scope, receive, self._joined.reading(send))
            else:
                await self.app(scope, receive, send)
            return

        templates = self._templates
        if templates is None:
            # Starlette puts the app in the scope before its middleware runs; a mounted
            # app later replaces it, so it is read now, on the way in.
            templates = self._templates = RouteTemplates(scope.get("app", self.app))
        method = scope.get("method", "GET")
        if method not in _METHODS:
            method = "_OTHER"
        work = WorkScope(asgi_scope=scope, owner=self._owner, templates=templates, method=method)
        if self._exemplars:
            try:
                work.trace_id = trace_id_of(scope)
            except Exception as exc:
                self._faults.report("tracing", exc)
        token = context.enter(work)
        request = _Request(send)
        failed = True
        try:
            await self.app(scope, receive, request)
            failed = False
        finally:
            context.leave(token)
            self._record(work, request)
            # In nplusone_mode="raise" this raises NPlusOneError once the response was
            # sent, and never in place of the application's own exception.
            context.close(work, raise_findings=not failed)

    def _record(self, work: WorkScope, request: _Request) -> None:
        try:
            end = request.done or perf_counter()
            method = work.method
            route = work.route
            status = request.status or 500
            key = (method, route, status)
            child = self._http_children.get(key)
            if child is None:
                child = self._http_children[key] = self._http.labels(method, route, str(status))
            child.observe(end - request.started, work.trace_id)
            queries = self._query_children.get(route)
            if queries is None:
                queries = self._query_children[route] = self._queries.labels(route)
            queries.observe(work.queries)
        except Exception as exc:
            self._faults.report("middleware", exc)

    def _app_owns(self, scope: Scope, path: str) -> bool:
        """Whether the app got a route of its own for one of poolwatch's paths.

        ``instrument_app`` refuses an app that has one; a route added afterwards wins,
        with one warning, since answering in its place would take the app's endpoint away.
        """
        owned = self._owned.get(path)
        if owned is None:
            try:
                owned = app_answers(scope.get("app", self.app), path)
            except Exception as exc:
                self._faults.report("middleware", exc)
                owned = False
            self._owned[path] = owned
            if owned:
                logger.warning(
                    "the app has a route of its own for %s, added after instrument_app(): "
                    "the app answers it, not poolwatch; give poolwatch another path "
                    "(metrics_path / findings_path)",
                    path,
                )
        return owned

    def _lifespan_receive(
        self, receive: Receive, on_shutdown: Callable[[], Awaitable[None]]
    ) -> Receive:
        """``receive`` that stops poolwatch's background task when the app shuts down."""

        async def wrapped() -> Message:
            message = await receive()
            if message.get("type") == "lifespan.shutdown":
                try:
                    await on_shutdown()
                except Exception as exc:
                    self._faults.report("lifespan", exc)
            return message

        return wrapped

    async def _serve(self, scope: Scope, send: Send, exposition: Exposition, path: str) -> None:
        headers = {
            name.decode("latin-1").lower(): value.decode("latin-1")
            for name, value in scope.get("headers", ())
        }
        response = exposition.respond(path, scope.get("method", "GET"), headers)
        await send(
            {
                "type": "http.response.start",
                "status": response.status,
                "headers": [
                    (k.encode("latin-1"), v.encode("latin-1")) for k, v in response.headers
                ],
            }
        )
        await send({"type": "http.response.body", "body": response.body})
