"""The FastAPI applications the middleware benchmarks serve: the same two endpoints per setup.

* ``bare``: FastAPI, no middleware;
* ``poolwatch-off``: ``PoolWatch(nplusone_mode="off").instrument_app(app)``;
* ``poolwatch``: ``PoolWatch().instrument_app(app)`` (defaults: N+1 detection logs);
* ``instrumentator``: ``Instrumentator(registry=CollectorRegistry()).instrument(app)``
  (prometheus-fastapi-instrumentator, its default metrics, in a registry of its own);
* ``starlette-exporter``: ``app.add_middleware(PrometheusMiddleware)``. starlette-exporter
  has no registry option: its metrics live in prometheus_client's global ``REGISTRY``,
  created by the first middleware and kept in a class-level dict that later instances of
  the same process reuse. In process every round reuses them (the same metric objects,
  no duplicate-registration error); under uvicorn each setup is a process of its own.

The endpoints: ``GET /json`` returns a constant JSON object; ``GET /items/{item_id}``
validates an int path parameter and returns it (the route label is the template).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from fastapi import FastAPI

__all__ = ["ENDPOINTS", "SETUPS", "build_app", "paths"]

SETUPS = ("bare", "poolwatch-off", "poolwatch", "instrumentator", "starlette-exporter")
SETUP_NAMES = {
    "bare": "bare FastAPI",
    "poolwatch-off": 'poolwatch (nplusone_mode="off")',
    "poolwatch": "poolwatch (default)",
    "instrumentator": "prometheus-fastapi-instrumentator",
    "starlette-exporter": "starlette-exporter",
}
ENDPOINTS = {"json": "GET /json", "items": "GET /items/{item_id}"}


def build_app(setup: str) -> tuple[FastAPI, Callable[[], None]]:
    """A fresh app instrumented as ``setup`` says, and the function that undoes it."""
    # Imported here: the load generator imports this module for paths() alone.
    from fastapi import FastAPI
    from prometheus_client import CollectorRegistry
    from prometheus_fastapi_instrumentator import Instrumentator
    from starlette_exporter import PrometheusMiddleware

    from poolwatch import PoolWatch

    app = FastAPI()

    @app.get("/json")
    async def constant() -> dict[str, str]:
        return {"hello": "world"}

    @app.get("/items/{item_id}")
    async def item(item_id: int) -> dict[str, int | str]:
        return {"item_id": item_id, "name": "item"}

    def nothing() -> None:
        return None

    if setup in ("poolwatch-off", "poolwatch"):
        watch = PoolWatch(nplusone_mode="off") if setup == "poolwatch-off" else PoolWatch()
        watch.instrument_app(app)
        return app, watch.uninstrument
    if setup == "instrumentator":
        Instrumentator(registry=CollectorRegistry()).instrument(app)
    elif setup == "starlette-exporter":
        app.add_middleware(PrometheusMiddleware)
    elif setup != "bare":
        raise ValueError(f"unknown setup {setup!r}; known: {SETUPS}")
    return app, nothing


def paths(endpoint: str, count: int = 100) -> list[str]:
    """Request paths for ``endpoint``: the one path, or ``count`` different item ids."""
    if endpoint == "json":
        return ["/json"]
    if endpoint == "items":
        return [f"/items/{i}" for i in range(1, count + 1)]
    raise ValueError(f"unknown endpoint {endpoint!r}; known: {sorted(ENDPOINTS)}")
