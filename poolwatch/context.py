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
from typing import Any

__all__ = ["NO_ROUTE", "UNMATCHED", "WorkScope", "current_route", "current_scope", "scope"]

NO_ROUTE = "none"
UNMATCHED = "unmatched"


class WorkScope:
    """One unit of work: an HTTP request or a ``poolwatch.scope(name)`` block."""

    __slots__ = ("_asgi", "_route", "queries")

    def __init__(
        self,
        route: str | None = None,
        asgi_scope: Mapping[str, Any] | None = None,
    ) -> None:
        self._route = route
        self._asgi = asgi_scope
        self.queries = 0

    @property
    def route(self) -> str:
        """The route template, resolved lazily from the ASGI scope.

        The router writes ``scope["route"]`` into the very dict the middleware was given,
        but only after the middleware has started, so the template is read on first use.
        """
        route = self._route
        if route is None:
            route = route_template(self._asgi) if self._asgi is not None else None
            if route is None:
                return UNMATCHED
            self._route = route
        return route


def route_template(asgi_scope: Mapping[str, Any]) -> str | None:
    """The route template (``/authors/{author_id}``) the router matched, or ``None``."""
    route = asgi_scope.get("route")
    if route is None:
        return None
    path = getattr(route, "path_format", None) or getattr(route, "path", None)
    if not isinstance(path, str):
        return None
    # Inside a Mount the route's path is relative; the mount's matched prefix is the part
    # of root_path the mount added on top of the application's own root_path.
    root = asgi_scope.get("root_path", "")
    app_root = asgi_scope.get("app_root_path", root)
    if isinstance(root, str) and isinstance(app_root, str) and len(root) > len(app_root):
        path = root[len(app_root) :] + path
    return path


_current: contextvars.ContextVar[WorkScope | None] = contextvars.ContextVar(
    "poolwatch_scope", default=None
)

current_scope = _current.get

# Callbacks run when a ``scope()`` block ends; a PoolWatch adds one while it is instrumented
# (and removes it in ``uninstrument``), so scope blocks feed its queries-per-scope histogram.
_scope_listeners: list[Callable[[WorkScope], None]] = []


def add_scope_listener(listener: Callable[[WorkScope], None]) -> None:
    """Call ``listener(work)`` whenever a :func:`scope` block ends."""
    _scope_listeners.append(listener)


def remove_scope_listener(listener: Callable[[WorkScope], None]) -> None:
    """Undo :func:`add_scope_listener` (no error if it was not added)."""
    if listener in _scope_listeners:
        _scope_listeners.remove(listener)


def current_route() -> str:
    """The route label queries issued here are counted under (``none`` outside any scope)."""
    work = _current.get()
    return NO_ROUTE if work is None else work.route


def enter(work: WorkScope) -> contextvars.Token[WorkScope | None]:
    """Make ``work`` the current scope; pass the token to :func:`leave`."""
    return _current.set(work)


def leave(token: contextvars.Token[WorkScope | None]) -> None:
    """Restore the scope that was current before :func:`enter`."""
    _current.reset(token)


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
    finally:
        _current.reset(token)
        for listener in tuple(_scope_listeners):
            listener(work)
