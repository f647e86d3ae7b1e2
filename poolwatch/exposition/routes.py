"""Route templates: the label a request's duration and statements are counted under.

The label is the template of the whole path the app matched, as the app's author wrote it
across every level: ``include_router(prefix=...)``, ``APIRouter(prefix=...)`` and
``app.mount("/t/{tenant}", sub_app)`` all contribute, so ``/t/acme/api/users/7`` is
``/t/{tenant}/api/users/{user_id}``: never a value from the URL, which would make one
series per tenant or id. It is relative to the app's ``root_path`` (a proxy prefix is not
part of the route).

The router leaves the matched route in ``scope["route"]``; a mount leaves the concrete
prefix it matched in ``root_path``, which is turned back into the mount's template by
replaying the mounts of the app's routing table on the request's path.

Routes the app did not declare through FastAPI count as routes all the same: FastAPI's
own (``/openapi.json``, ``/docs``, ``/redoc``, ``/docs/oauth2-redirect``, wherever
``docs_url`` and the others put them) and any plain Starlette ``Route`` are labelled by
their path template. FastAPI's router (0.92 as 0.165) and Starlette's older ones (0.25)
do not name them in ``scope["route"]``, but every router leaves the matched route's
``endpoint`` in the scope, which finds the route again.

A mount of an app with no routes of its own (``StaticFiles``, a plain ASGI app) is
labelled by its mount path followed by ``/{path}`` (``/static/{path}``): Starlette's own
template of the mount and the ``http.route`` FastAPI reports, which a route declared at
``/static`` itself cannot be mistaken for. A URL that no route and no mount answered has no
template: ``unmatched``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from functools import cache
from typing import Any

__all__ = ["RouteTemplates", "app_answers", "route_path"]

# Concrete mount prefixes remembered (per app); a bound, since a prefix can hold a tenant.
_CACHE_SIZE = 1024


class RouteTemplates:
    """Resolves the route template of a routed ASGI scope of one application.

    ``root`` is the application (or router) whose ``routes`` the request went through; it
    is only needed for requests that entered a mount or reached a route the router did not
    name in the scope.
    """

    __slots__ = ("_mounts", "_root")

    def __init__(self, root: object = None) -> None:
        self._root = root
        # Concrete mount prefix -> its template and the routes of the app mounted there.
        self._mounts: dict[str, tuple[str, Sequence[object]]] = {}

    def __call__(self, scope: Mapping[str, Any]) -> str | None:
        """The template of the route ``scope`` was routed to, or ``None`` if none matched."""
        route = scope.get("route")
        prefix = _mount_prefix(scope)
        mount = _mount_class()
        if route is not None and (mount is None or not isinstance(route, mount)):
            own = _included_route_path(scope, route) or _own_path(route)
            if own is None or not prefix:  # most requests: no mount
                return own
            return self._mounted(prefix, scope)[0] + own
        endpoint = scope.get("endpoint")
        if not prefix:
            # A route no router named in the scope (FastAPI's docs, a Starlette Route): the
            # one whose endpoint the router left there. No endpoint: nothing matched.
            routes = getattr(self._root, "routes", None)
            if endpoint is None or not routes:
                return None
            return _leaf(routes, route_path(scope), endpoint)
        # Under a mount, with no route of the mounted app in the scope (older Starlette,
        # 0.25 among them, and FastAPI's router name only FastAPI's routes there), the
        # mounted app's routes are matched again; a plain ASGI app mounted as is (or no
        # match) leaves the mount itself.
        template, routes = self._mounted(prefix, scope)
        return template + (_leaf(routes, route_path(scope), endpoint) or "/{path}")

    def _mounted(self, prefix: str, scope: Mapping[str, Any]) -> tuple[str, Sequence[object]]:
        known = self._mounts.get(prefix)
        if known is not None:
            return known
        routes = getattr(self._root, "routes", None)
        found = _replay(routes, prefix + route_path(scope), len(prefix)) if routes else None
        # A routing table poolwatch cannot replay (a custom router): the prefix as is.
        known = found or (prefix, ())
        if len(self._mounts) >= _CACHE_SIZE:
            self._mounts.clear()
        self._mounts[prefix] = known
        return known


def route_path(scope: Mapping[str, Any]) -> str:
    """The request's path inside the app: without the ``root_path`` servers prepend.

    Behind a proxy that strips ``/api`` (``uvicorn --root-path /api``), a request for
    ``/api/metrics`` reaches the app with path ``/api/metrics`` and root path ``/api``;
    the app's own routes, and poolwatch's, see ``/metrics`` (as Starlette's router does).
    """
    path: str = scope.get("path", "")
    root = scope.get("root_path")
    if not root or not path.startswith(root):
        return path
    if len(path) == len(root):
        return "/"
    return path[len(root) :] if path[len(root)] == "/" else path


def _mount_prefix(scope: Mapping[str, Any]) -> str:
    """The concrete path prefix the mounts of this request matched (``/t/acme``)."""
    root = scope.get("root_path")
    if not root or not isinstance(root, str):
        return ""
    # Starlette keeps the root path the server gave in app_root_path once a mount adds to
    # root_path; without it, no mount was entered.
    app_root = scope.get("app_root_path", root)
    if not isinstance(app_root, str) or len(root) <= len(app_root):
        return ""
    return root[len(app_root) :]


def _own_path(route: object) -> str | None:
    path = getattr(route, "path_format", None) or getattr(route, "path", None)
    return path if isinstance(path, str) else None


def _included_route_path(scope: Mapping[str, Any], route: object) -> str | None:
    """The full path of a route FastAPI matched through a lazily included router.

    Since FastAPI 0.16x, ``include_router`` no longer copies routes with their prefixes:
    ``scope["route"]`` is the router's own route (``/{user_id}``) and the prefixed path
    lives in FastAPI's private per-request state. This is the one place that reads it,
    and only when it describes the very route that was matched; older FastAPI versions
    do not set it and copied routes carry their full path themselves.
    """
    state = scope.get("fastapi")
    if not isinstance(state, dict):
        return None
    context = state.get("effective_route_context")
    if context is None or getattr(context, "original_route", None) is not route:
        return None
    path = getattr(context, "path_format", None)
    return path if isinstance(path, str) and path else None


def _replay(
    routes: Sequence[object], path: str, length: int
) -> tuple[str, Sequence[object]] | None:
    """The template of ``path[:length]``, the part of ``path`` mounts matched, and the
    routes of the app mounted there.

    Tries the mounts (and hosts, whose mounts are as good a guess as any: the host was
    matched on a header) in routing order, as Starlette's router does.
    """
    if length == 0:
        return "", routes
    mount, host = _mount_class(), _host_class()
    for route in routes:
        if mount is not None and isinstance(route, mount):
            match = route.path_regex.match(path)
            if match is None:
                continue
            remaining = "/" + match.group("path")
            used = len(path) - len(remaining)
            if used > length:
                continue
            inner = _replay(route.routes, remaining, length - used)
            if inner is not None:
                return str(route.path_format).removesuffix("/{path}") + inner[0], inner[1]
        elif host is not None and isinstance(route, host):
            inner = _replay(route.routes, path, length)
            if inner is not None:
                return inner
    return None


def _leaf(routes: Sequence[object], path: str, endpoint: object = None) -> str | None:
    """The template of the route of ``routes`` (not a mount) the router chose for ``path``.

    The first whose path matches and whose endpoint is the one the router left in the
    scope, else the first whose path matches (the router tries them in that order).
    """
    mount, host = _mount_class(), _host_class()
    first = None
    for route in routes:
        if (mount is not None and isinstance(route, mount)) or (
            host is not None and isinstance(route, host)
        ):
            continue
        regex = getattr(route, "path_regex", None)
        template = getattr(route, "path_format", None)
        if regex is None or not isinstance(template, str) or not regex.match(path):
            continue
        if endpoint is None or getattr(route, "endpoint", None) is endpoint:
            return template
        first = first or template
    return first


@cache
def _mount_class() -> type[Any] | None:
    try:
        from starlette.routing import Mount
    except ImportError:  # a bare ASGI app without Starlette: no mounts to know
        return None
    return Mount


@cache
def _host_class() -> type[Any] | None:
    try:
        from starlette.routing import Host
    except ImportError:
        return None
    return Host


def app_answers(app: object, path: str) -> bool:
    """Whether ``app``'s own routing table has a route of its own for ``path``.

    A route or mount that answers ``path`` but not a made-up path beside it: catch-alls
    (``/{slug}``, a single-page app's fallback, static files at ``/``) answer everything
    and are not the app's own ``/metrics``. Routing tables poolwatch cannot match against
    answer nothing.
    """
    routes = getattr(app, "routes", None)
    if not routes:
        return False
    try:
        from starlette.routing import Match
    except ImportError:
        return False
    beside = path.rstrip("/") + "-poolwatch-unlikely-path"
    for route in routes:
        try:
            if _matches(route, path, Match.NONE) and not _matches(route, beside, Match.NONE):
                return True
        except Exception:  # a route of a kind that cannot be matched out of a request
            continue
    return False


def _matches(route: Any, path: str, none: object) -> bool:
    for candidate in (path, path.rstrip("/") + "/"):  # a mount answers /metrics/
        scope = {
            "type": "http",
            "method": "GET",
            "path": candidate,
            "root_path": "",
            "path_params": {},
            "query_string": b"",
            "headers": [],
        }
        match, _ = route.matches(scope)
        if match is not none:
            return True
    return False
