"""Which request (or named scope) the running code works for.

One ``ContextVar`` holds the current :class:`WorkScope`. asyncio copies the context into
every task it creates and Starlette copies it into the threadpool, so queries issued from
``asyncio.gather`` children, sync endpoints and background tasks all find the scope of the
request that started them. The scope object is shared, not copied, so counts made in a
child are seen by the request.
"""

from __future__ import annotations

import contextvars
from collections.abc import Callable, Generator, Mapping
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

from poolwatch.errors import NPlusOneError

if TYPE_CHECKING:
    from poolwatch.queries.eager import ScopeEagerLoads
    from poolwatch.queries.groups import ScopeQueries

__all__ = [
    "NO_ROUTE",
    "UNMATCHED",
    "WorkScope",
    "allow_nplusone",
    "current_route",
    "current_scope",
    "scope",
]

NO_ROUTE = "none"
UNMATCHED = "unmatched"


def _router_path(scope: Mapping[str, Any]) -> str | None:
    """The template the router wrote into an ASGI scope, for scopes made without an
    application's route templates (the middleware always hands its own, which also
    know mounts: :class:`poolwatch.exposition.routes.RouteTemplates`)."""
    path = getattr(scope.get("route"), "path", None)
    return path if isinstance(path, str) else None


class WorkScope:
    """One unit of work: an HTTP request or a ``poolwatch.scope(name)`` block."""

    __slots__ = (
        "_asgi",
        "_route",
        "_templates",
        "checkouts",
        "closed",
        "eager",
        "grouped",
        "method",
        "owner",
        "queries",
        "trace_id",
    )

    def __init__(
        self,
        route: str | None = None,
        asgi_scope: Mapping[str, Any] | None = None,
        owner: object = None,
        templates: Callable[[Mapping[str, Any]], str | None] | None = None,
        method: str = "",
    ) -> None:
        self._route = route
        self._asgi = asgi_scope
        self._templates = templates or _router_path
        # The HTTP method of a request ("" for scope() blocks), named in findings.
        self.method = method
        self.queries = 0
        # The PoolWatch whose middleware opened this scope; None for scope() blocks,
        # which every active PoolWatch judges.
        self.owner = owner
        # Its statements grouped for N+1 detection, made on the first one recorded.
        self.grouped: ScopeQueries | None = None
        # Its eager loads (unused_eager_load), made by an adapter on the first one seen
        # while the scope is judged; released once every listener has judged it.
        self.eager: ScopeEagerLoads | None = None
        # Set once the scope has been judged; statements arriving later (from a task that
        # outlived its request) are judged one group at a time.
        self.closed = False
        # The request's trace id (exemplars of its observations), when it has one.
        self.trace_id: str | None = None
        # The checkout each pool (its observer's id) handed out last in this scope, for
        # a statement sent from another context of it: a FastAPI sync dependency takes
        # the connection in one worker thread, the sync endpoint uses it in another.
        self.checkouts: dict[int, Any] | None = None

    @property
    def route(self) -> str:
        """The route template, resolved lazily from the ASGI scope.

        The router writes ``scope["route"]`` into the very dict the middleware was given,
        but only after the middleware has started, so the template is read on first use.
        """
        route = self._route
        if route is None:
            route = self._templates(self._asgi) if self._asgi is not None else None
            if route is None:
                return UNMATCHED
            self._route = route
        return route

    @property
    def endpoint(self) -> Any:
        """The function the router matched the request to (``scope["endpoint"]``), if
        any: where a response's serialization is blamed."""
        asgi = self._asgi
        return None if asgi is None else asgi.get("endpoint")


_current: contextvars.ContextVar[WorkScope | None] = contextvars.ContextVar(
    "poolwatch_scope", default=None
)

current_scope = _current.get

_allowed: contextvars.ContextVar[bool] = contextvars.ContextVar(
    "poolwatch_allow_nplusone", default=False
)

nplusone_allowed = _allowed.get

# Callbacks run when a scope (request or ``scope()`` block) ends: each active PoolWatch
# (added at construction, removed by ``uninstrument``) and each testing.capture() block.
_scope_listeners: list[Callable[[WorkScope], None]] = []


def add_scope_listener(listener: Callable[[WorkScope], None]) -> None:
    """Call ``listener(work)`` whenever a scope ends."""
    _scope_listeners.append(listener)


def remove_scope_listener(listener: Callable[[WorkScope], None]) -> None:
    """Undo :func:`add_scope_listener` (no error if it was not added)."""
    if listener in _scope_listeners:
        _scope_listeners.remove(listener)


def current_route() -> str:
    """The route label queries issued here are counted under (``none`` outside any scope)."""
    work = _current.get()
    return NO_ROUTE if work is None else work.route


def close(work: WorkScope, *, raise_findings: bool) -> None:
    """Tell every listener that ``work`` has ended.

    A listener in ``raise`` mode raises :class:`NPlusOneError`; the others still run,
    and the error is raised afterwards only if the scope ended normally
    (``raise_findings``), so it never hides the application's own exception.
    """
    error: NPlusOneError | None = None
    for listener in tuple(_scope_listeners):
        try:
            listener(work)
        except NPlusOneError as exc:
            error = error or exc
    work.closed = True
    eager, work.eager = work.eager, None
    if eager is not None:  # its watched relations and listeners come off now
        eager.release()
    if error is not None and raise_findings:
        raise error


@contextmanager
def allow_nplusone() -> Generator[None, None, None]:
    """Leave the statements of this block out of N+1 and duplicate detection.

    For a loop that is known and accepted (an admin export); tasks started inside
    inherit it::

        with poolwatch.allow_nplusone():
            for row in rows:
                await row.fetch_related("owner")
    """
    token = _allowed.set(True)
    try:
        yield
    finally:
        _allowed.reset(token)


# Make a scope current and restore the previous one: the ContextVar's own methods, bound
# here rather than wrapped, since the middleware calls them on every request.
enter = _current.set
leave = _current.reset


@contextmanager
def scope(name: str) -> Generator[WorkScope, None, None]:
    """Attribute the queries of a block to ``name``, outside HTTP (jobs, scripts).

    Works in sync and async code alike; tasks created inside inherit it::

        with poolwatch.scope("nightly-report"):
            await build_report()
    """
    if not isinstance(name, str) or not name:
        raise ValueError(f"scope name={name!r}: must be a non-empty string")
    work = WorkScope(route=name)
    token = _current.set(work)
    try:
        yield work
    except BaseException:
        _current.reset(token)
        close(work, raise_findings=False)
        raise
    _current.reset(token)
    close(work, raise_findings=True)
