"""One ``/metrics`` for an app that already serves its own: poolwatch's metrics join the
registry the app's endpoint renders.

Apps expose prometheus_client's registries in a few well-worn ways, and each renders the
global ``REGISTRY`` unless told otherwise: ``make_asgi_app()`` mounted at ``/metrics``,
prometheus-fastapi-instrumentator's ``.expose()``, starlette-exporter's
``handle_metrics``, a hand-written route calling ``generate_latest()``. So poolwatch finds
the registry the endpoint closes over when it has one (``make_asgi_app(registry)``, an
instrumentator's own), takes ``REGISTRY`` otherwise, and registers there a
:class:`Forwarder` that yields poolwatch's metric families at each scrape.

What cannot be known before the first scrape (a route that renders some other text) is
checked then: :class:`JoinCheck` reads the app's first ``/metrics`` response as it passes
through the middleware, and says once, with the way out, when poolwatch's metrics are not
in it.
"""

from __future__ import annotations

import logging
import zlib
from collections.abc import Iterator
from typing import Any

from prometheus_client import REGISTRY, CollectorRegistry
from prometheus_client.metrics_core import Metric
from prometheus_client.registry import Collector

__all__ = ["MARKER", "Forwarder", "JoinCheck", "families_of", "registry_served_at"]

logger = logging.getLogger("poolwatch")

# What every scrape of poolwatch's metrics contains (at zero from the start).
MARKER = b"poolwatch_internal_errors_total"
# Families the app's registry has of its own when it is prometheus_client's default one
# (and poolwatch's registry too, for its own endpoint): forwarded, they would be twice.
_PROCESS_PREFIXES = ("process_", "python_gc_", "python_info")
_LOOKED_AT = 65536  # bytes of the app's first response read for MARKER


class Forwarder(Collector):
    """Yields ``source``'s families (the process ones aside, and any ``taken`` name the
    target registry has of its own) into another registry."""

    def __init__(self, source: CollectorRegistry, taken: frozenset[str] = frozenset()) -> None:
        self._source = source
        self._taken = taken

    def describe(self) -> list[Metric]:
        # Nothing to describe up front: poolwatch's families are checked for clashes in
        # poolwatch's own registry; described here they would be collected at register.
        return []

    def collect(self) -> Iterator[Metric]:
        for family in self._source.collect():
            if not family.name.startswith(_PROCESS_PREFIXES) and family.name not in self._taken:
                yield family


def families_of(registry: CollectorRegistry) -> frozenset[str]:
    """The family names a registry renders now (read once, when joining it)."""
    return frozenset(family.name for family in registry.collect())


def registry_served_at(app: Any, path: str) -> CollectorRegistry:
    """The registry the app's endpoint at ``path`` renders, as far as can be seen: one
    its handler closes over, else prometheus_client's global ``REGISTRY``."""
    for route in getattr(app, "routes", None) or ():
        if getattr(route, "path", None) not in (path, path.rstrip("/")):
            continue
        for handler in (getattr(route, "app", None), getattr(route, "endpoint", None)):
            found = _closed_over_registry(handler)
            if found is not None:
                return found
    return REGISTRY


def _closed_over_registry(handler: Any, depth: int = 0) -> CollectorRegistry | None:
    """A registry in ``handler``'s closure, or an instance's ``registry`` it closes over
    (prometheus-fastapi-instrumentator keeps it there); two levels deep at most."""
    if handler is None or depth > 2:
        return None
    if isinstance(handler, CollectorRegistry):
        return handler
    own = getattr(handler, "registry", None)
    if isinstance(own, CollectorRegistry):
        return own
    function = getattr(handler, "__func__", handler)
    for cell in getattr(function, "__closure__", None) or ():
        try:
            value = cell.cell_contents
        except ValueError:  # an empty cell
            continue
        found = _closed_over_registry(value, depth + 1)
        if found is not None:
            return found
    return None


class JoinCheck:
    """Reads the app's first ``/metrics`` response for poolwatch's metrics; one warning,
    with the way out, if they are not there."""

    __slots__ = ("_inflate", "_judging", "_seen", "checked", "path")

    def __init__(self, path: str) -> None:
        self.path = path
        self.checked = False
        self._seen = b""
        self._inflate: Any = None
        self._judging = False

    def reading(self, send: Any) -> Any:
        """``send``, reading what passes through it (until the check is done)."""

        async def read_and_send(message: Any) -> None:
            try:
                if message["type"] == "http.response.start":
                    self.start(message["status"], list(message.get("headers", ())))
                elif message["type"] == "http.response.body":
                    self.body(message.get("body", b""), message.get("more_body", False))
            except Exception:  # reading is poolwatch's business; sending is the app's
                self.checked = True
            await send(message)

        return read_and_send

    def start(self, status: int, headers: list[tuple[bytes, bytes]]) -> None:
        """The response's start: only a 200 is judged; a gzipped body is inflated."""
        self._seen = b""
        self._judging = status == 200  # a refusal (401, say) says nothing of the content
        if not self._judging:
            return
        encoding = dict(headers).get(b"content-encoding", b"").lower()
        self._inflate = zlib.decompressobj(wbits=31) if encoding == b"gzip" else None

    def body(self, chunk: bytes, more: bool) -> None:
        """A chunk of the response body (``more``: another one follows)."""
        if self.checked or not self._judging:
            return
        if self._inflate is not None:
            try:
                chunk = self._inflate.decompress(chunk, _LOOKED_AT)
            except zlib.error:
                chunk = b""
        self._seen = (self._seen + chunk)[-_LOOKED_AT:]
        if MARKER in self._seen:
            self.checked, self._seen = True, b""
            return
        if not more:
            self.checked, self._seen = True, b""
            logger.warning(
                "poolwatch: the app's own %s does not show poolwatch's metrics (it renders "
                "a registry other than the one poolwatch joined). Pass that registry: "
                "PoolWatch(registry=...), or serve poolwatch's on a path of its own: "
                "metrics_path='/poolwatch/metrics'",
                self.path,
            )
