"""Plain ASGI middleware: times each request, binds its scope, serves ``/metrics``.

It also serves the recent query findings as JSON (``/poolwatch/findings``), and ends each
request's scope, which is when N+1 detection judges it.

Plain ASGI rather than Starlette's ``BaseHTTPMiddleware``: the request's context variables
then reach the endpoint, the threadpool and background tasks, and streaming responses are
untouched. The request duration ends when the last body chunk is sent; background tasks
that run afterwards still count their queries towards the request.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable, MutableMapping
from time import perf_counter
from typing import Any

from prometheus_client import CollectorRegistry
from prometheus_client.exposition import choose_encoder

from poolwatch import context
from poolwatch.context import WorkScope
from poolwatch.metrics import Metrics
from poolwatch.safety import FaultReporter

__all__ = ["PoolWatchMiddleware"]

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


class _Request:
    """Per-request state shared with the ``send`` wrapper (cheaper than a closure cell)."""

    __slots__ = ("done", "send", "started", "status")

    def __init__(self, send: Send) -> None:
        self.send = send
        self.started = perf_counter()
        self.status = 0
        self.done = 0.0

    async def __call__(self, message: Message) -> None:
        kind = message["type"]
        if kind == "http.response.start":
            self.status = message["status"]
        elif kind == "http.response.body" and not message.get("more_body", False):
            self.done = perf_counter()
        await self.send(message)


class PoolWatchMiddleware:
    """Times HTTP requests and attributes the queries they issue to their route.

    Usually added by :meth:`PoolWatch.instrument_app`; for a bare ASGI app::

        app = PoolWatchMiddleware(app, metrics=..., registry=..., faults=...)
    """

    def __init__(
        self,
        app: ASGIApp,
        *,
        metrics: Metrics,
        registry: CollectorRegistry,
        faults: FaultReporter,
        metrics_path: str | None = "/metrics",
        findings_path: str | None = None,
        findings: Callable[[], list[dict[str, Any]]] = list,
        exclude_paths: frozenset[str] = frozenset(),
        is_active: Callable[[], bool] = lambda: True,
        owner: object = None,
    ) -> None:
        self.app = app
        self._registry = registry
        self._faults = faults
        self._metrics_path = metrics_path
        self._findings_path = findings_path
        self._findings = findings
        served = {p for p in (metrics_path, findings_path) if p}
        self._excluded = exclude_paths | served
        self._is_active = is_active
        self._owner = owner
        self._http = metrics.http_duration
        self._queries = metrics.request_queries
        self._http_children: dict[tuple[str, str, str], Any] = {}
        self._query_children: dict[str, Any] = {}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not self._is_active():
            await self.app(scope, receive, send)
            return
        path = scope.get("path", "")
        if path in self._excluded:
            if path == self._metrics_path:
                await self._serve_metrics(scope, send)
            elif path == self._findings_path:
                await self._serve_findings(scope, send)
            else:
                await self.app(scope, receive, send)
            return

        work = WorkScope(asgi_scope=scope, owner=self._owner)
        token = context.enter(work)
        request = _Request(send)
        try:
            await self.app(scope, receive, request)
        except BaseException:
            if not request.status:
                request.status = 500
            context.leave(token)
            self._record(scope, work, request)
            context.close(work, raise_findings=False)
            raise
        context.leave(token)
        self._record(scope, work, request)
        # In nplusone_mode="raise" this raises NPlusOneError, after the response was sent.
        context.close(work, raise_findings=True)

    def _record(self, scope: Scope, work: WorkScope, request: _Request) -> None:
        try:
            end = request.done or perf_counter()
            method = scope.get("method", "GET")
            if method not in _METHODS:
                method = "_OTHER"
            route = work.route
            key = (method, route, str(request.status or 500))
            child = self._http_children.get(key)
            if child is None:
                child = self._http_children[key] = self._http.labels(*key)
            child.observe(end - request.started)
            queries = self._query_children.get(route)
            if queries is None:
                queries = self._query_children[route] = self._queries.labels(route)
            queries.observe(work.queries)
        except Exception as exc:
            self._faults.report("middleware", exc)

    async def _serve_metrics(self, scope: Scope, send: Send) -> None:
        accept = ""
        for name, value in scope.get("headers", ()):
            if name == b"accept":
                accept = value.decode("latin-1")

        def render() -> tuple[bytes, str]:
            encoder, content_type = choose_encoder(accept)
            return encoder(self._registry), content_type

        await self._serve(scope, send, "exposition", render)

    async def _serve_findings(self, scope: Scope, send: Send) -> None:
        def render() -> tuple[bytes, str]:
            body = json.dumps({"findings": self._findings()}, indent=1)
            return body.encode(), "application/json"

        await self._serve(scope, send, "findings", render)

    async def _serve(
        self,
        scope: Scope,
        send: Send,
        component: str,
        render: Callable[[], tuple[bytes, str]],
    ) -> None:
        """Answer GET/HEAD with ``render()``; a fault in it is a 500, counted, not raised."""
        method = scope.get("method")
        if method not in ("GET", "HEAD"):
            await _respond(
                send,
                405,
                body=b"Method Not Allowed\n",
                content_type=b"text/plain",
                extra=[(b"allow", b"GET, HEAD")],
            )
            return
        try:
            body, content_type = render()
        except Exception as exc:
            self._faults.report(component, exc)
            await _respond(send, 500, body=b"unavailable\n", content_type=b"text/plain")
            return
        await _respond(
            send, 200, body=body, content_type=content_type.encode("latin-1"), head=method == "HEAD"
        )


async def _respond(
    send: Send,
    status: int,
    *,
    body: bytes,
    content_type: bytes,
    extra: list[tuple[bytes, bytes]] | None = None,
    head: bool = False,
) -> None:
    headers = [(b"content-type", content_type), (b"content-length", str(len(body)).encode())]
    await send(
        {"type": "http.response.start", "status": status, "headers": headers + (extra or [])}
    )
    await send({"type": "http.response.body", "body": b"" if head else body})
