"""poolwatch never takes over what the app already has, and installs once per app."""

from __future__ import annotations

import logging
import socket
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from fastapi import APIRouter, FastAPI
from prometheus_client import REGISTRY, CollectorRegistry, Counter, generate_latest, make_asgi_app
from sqlalchemy import Engine, create_engine

from poolwatch import ConfigError, PoolWatch, context
from tests.metrics_helpers import total

HTTP = "http_server_request_duration_seconds_count"


@pytest.fixture
def engine() -> Iterator[Engine]:
    engine = create_engine("sqlite://")
    yield engine
    engine.dispose()


@pytest.fixture
def file_engine(tmp_path: Path) -> Iterator[Engine]:
    """A file database's engine: a QueuePool (5 + 10 overflow), shared by Starlette's
    threads."""
    engine = create_engine(f"sqlite:///{tmp_path / 'app.db'}")
    yield engine
    engine.dispose()


def own_metrics_app(kind: str) -> tuple[FastAPI, CollectorRegistry]:
    """An app exposing its own registry on /metrics, the ways public apps do it."""
    registry = CollectorRegistry()
    Counter("shop_orders", "Orders taken.", registry=registry).inc()
    app = FastAPI()
    if kind == "mount":
        app.mount("/metrics", make_asgi_app(registry))
    else:
        router = APIRouter()

        @router.get("/metrics")
        def metrics() -> str:
            return "shop_orders_total 1.0"

        app.include_router(router)

    @app.get("/{slug}")  # a catch-all is no metrics endpoint of its own
    def page(slug: str) -> dict[str, str]:
        return {"slug": slug}

    return app, registry


async def _scrape(app: FastAPI, path: str = "/metrics") -> httpx.Response:
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
        return await client.get(path, follow_redirects=True)


async def test_an_apps_own_registry_mounted_at_metrics_shows_poolwatchs_too(
    file_engine: Engine, caplog: pytest.LogCaptureFixture
) -> None:
    engine = file_engine
    # prometheus_client's make_asgi_app(registry) at /metrics: the default just works.
    app, _ = own_metrics_app("mount")
    watch = PoolWatch()
    with caplog.at_level(logging.INFO, logger="poolwatch"):
        watch.instrument_app(app)
    watch.instrument_sqlalchemy(engine, pool="main")
    try:
        with engine.connect() as connection:
            connection.exec_driver_sql("SELECT 1")
        text_ = (await _scrape(app, "/metrics/")).text  # the mount's own path
    finally:
        watch.uninstrument()
    assert "shop_orders_total 1.0" in text_  # the app's own
    assert 'db_client_connection_max{pool="main"} 15.0' in text_  # poolwatch's, beside them
    assert text_.count("# HELP process_cpu_seconds_total") <= 1  # no family twice
    lines = [r.getMessage() for r in caplog.records if "joined" in r.getMessage()]
    assert lines == [
        "poolwatch: the app serves its own /metrics; poolwatch's metrics joined its "
        "registry, which it renders: one endpoint shows both (to serve poolwatch's apart: "
        "metrics_path='/poolwatch/metrics')"
    ]
    assert "poolwatch_internal_errors_total" not in (await _scrape(app, "/metrics/")).text


@pytest.mark.parametrize("tool", ["make_asgi_app", "instrumentator", "starlette_exporter"])
async def test_apps_serving_the_default_registry_show_poolwatchs_metrics_in_it(
    file_engine: Engine, tool: str, caplog: pytest.LogCaptureFixture
) -> None:
    engine = file_engine
    app = FastAPI()

    @app.get("/items")
    def items() -> list[int]:
        with engine.connect() as connection:
            return [connection.exec_driver_sql("SELECT 1").scalar()]

    if tool == "make_asgi_app":
        app.mount("/metrics", make_asgi_app())
    elif tool == "instrumentator":
        instrumentator = pytest.importorskip("prometheus_fastapi_instrumentator")
        instrumentator.Instrumentator().instrument(app).expose(app)
    else:
        exporter = pytest.importorskip("starlette_exporter")
        app.add_middleware(exporter.PrometheusMiddleware)
        app.add_route("/metrics", exporter.handle_metrics)
    watch = PoolWatch()
    with caplog.at_level(logging.WARNING, logger="poolwatch"):
        watch.instrument_app(app)
        watch.instrument_sqlalchemy(engine, pool="main")
        try:
            transport = httpx.ASGITransport(app=app)
            async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
                assert (await client.get("/items")).json() == [1]
                text_ = (await client.get("/metrics", follow_redirects=True)).text
                again = (await client.get("/metrics", follow_redirects=True)).text
        finally:
            watch.uninstrument()
    assert 'db_client_connection_max{pool="main"} 15.0' in text_
    assert 'http_server_request_duration_seconds_count{method="GET",route="/items"' in text_
    assert 'poolwatch_internal_errors_total{component="collector"} 0.0' in again
    assert not [r for r in caplog.records if "does not show poolwatch's metrics" in r.message]
    assert watch.registry is not REGISTRY
    assert "poolwatch_internal_errors_total" not in generate_latest(REGISTRY).decode()  # undone


async def test_an_endpoint_that_renders_something_else_is_told_once_at_its_first_scrape(
    caplog: pytest.LogCaptureFixture,
) -> None:
    app, _ = own_metrics_app("route")  # a hand-written /metrics returning its own text
    watch = PoolWatch()
    watch.instrument_app(app)
    try:
        with caplog.at_level(logging.WARNING, logger="poolwatch"):
            for _ in range(3):
                assert (await _scrape(app)).json() == "shop_orders_total 1.0"  # untouched
    finally:
        watch.uninstrument()
    warnings = [r.getMessage() for r in caplog.records]
    assert len(warnings) == 1, warnings
    assert "the app's own /metrics does not show poolwatch's metrics" in warnings[0]
    assert "PoolWatch(registry=...)" in warnings[0]
    assert "metrics_path='/poolwatch/metrics'" in warnings[0]


def test_an_apps_own_findings_path_is_refused_with_the_way_out() -> None:
    app = FastAPI()

    @app.get("/poolwatch/findings")
    def findings() -> list[str]:
        return []

    watch = PoolWatch()
    with pytest.raises(ConfigError) as refused:
        watch.instrument_app(app)
    message = str(refused.value)
    assert message.startswith("findings_path='/poolwatch/findings': is a route the app already")
    assert "findings_path='/poolwatch/poolwatch/findings'" in message
    assert app.user_middleware == []  # nothing half-installed
    assert watch._scope_closed not in context._scope_listeners


async def test_either_way_out_keeps_the_apps_endpoint_and_serves_poolwatch(
    engine: Engine,
) -> None:
    app, _ = own_metrics_app("mount")
    watch = PoolWatch(metrics_path="/poolwatch/metrics")
    watch.instrument_app(app)
    watch.instrument_sqlalchemy(engine, pool="main")
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
        own = await client.get("/metrics/")
        ours = await client.get("/poolwatch/metrics")
    watch.uninstrument()
    assert "shop_orders_total 1.0" in own.text
    assert "db_client_connection_max" not in own.text
    assert 'poolwatch_pool_drift{pool="main"} 0.0' in ours.text


async def test_with_metrics_off_poolwatch_leaves_the_path_to_the_app() -> None:
    app, _ = own_metrics_app("route")
    watch = PoolWatch(expose_metrics=False)
    watch.instrument_app(app)
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
        own = await client.get("/metrics")
    watch.uninstrument()
    assert own.json() == "shop_orders_total 1.0"


async def test_a_metrics_route_added_after_instrument_app_stays_the_apps(
    caplog: pytest.LogCaptureFixture,
) -> None:
    app = FastAPI()
    watch = PoolWatch()
    watch.instrument_app(app)

    @app.get("/metrics")
    def metrics() -> str:
        return "the app's own"

    transport = httpx.ASGITransport(app=app)
    with caplog.at_level(logging.WARNING, logger="poolwatch"):
        async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
            answers = [(await client.get("/metrics")).json() for _ in range(3)]
            findings = await client.get("/poolwatch/findings")
    watch.uninstrument()
    assert answers == ["the app's own"] * 3
    assert findings.json() == {"findings": []}  # poolwatch's other path is still its own
    warnings = [r for r in caplog.records if "route of its own for /metrics" in r.message]
    assert len(warnings) == 1


async def test_instrument_app_twice_counts_each_request_once() -> None:
    app = FastAPI()

    @app.get("/ping")
    def ping() -> str:
        return "pong"

    watch = PoolWatch()
    assert watch.instrument_app(app) is app
    assert watch.instrument_app(app) is app
    assert len(app.user_middleware) == 1
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
        await client.get("/ping")
    watch.uninstrument()
    assert total(watch.registry, HTTP, route="/ping") == 1


async def test_process_metrics_are_served_as_the_default_registry_would() -> None:
    app = FastAPI()
    watch = PoolWatch()
    watch.instrument_app(app)
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
        text_ = (await client.get("/metrics")).text
    watch.uninstrument()
    for name in ("process_resident_memory_bytes", "python_gc_objects_collected_total"):
        assert name in text_
    assert "python_info{" in text_


def test_a_metrics_port_in_use_fails_with_the_setting_and_installs_nothing() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        watch = PoolWatch(metrics_port=port, metrics_host="127.0.0.1")
        app = FastAPI()
        with pytest.raises(ConfigError, match=rf"^metrics_port={port}: cannot listen on") as e:
            watch.instrument_app(app)
    assert "PROMETHEUS_MULTIPROC_DIR" in str(e.value)  # why several workers cannot share it
    assert app.user_middleware == []
    assert watch._scope_closed not in context._scope_listeners
    assert watch._server is None
