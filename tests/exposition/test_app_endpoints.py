"""poolwatch never takes over what the app already has, and installs once per app."""

from __future__ import annotations

import logging
import socket
from collections.abc import Iterator

import httpx
import pytest
from fastapi import APIRouter, FastAPI
from prometheus_client import CollectorRegistry, Counter, make_asgi_app
from sqlalchemy import Engine, create_engine

from poolwatch import ConfigError, PoolWatch, context
from tests.metrics_helpers import total

HTTP = "http_server_request_duration_seconds_count"


@pytest.fixture
def engine() -> Iterator[Engine]:
    engine = create_engine("sqlite://")
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


@pytest.mark.parametrize("kind", ["mount", "route"])
def test_an_app_with_its_own_metrics_is_refused_with_the_ways_out(kind: str) -> None:
    app, _ = own_metrics_app(kind)
    watch = PoolWatch()
    with pytest.raises(ConfigError) as refused:
        watch.instrument_app(app)
    message = str(refused.value)
    assert message.startswith("metrics_path='/metrics': is a route the app already has")
    assert "metrics_path='/poolwatch/metrics'" in message
    assert "use_global_registry=True, expose_metrics=False" in message
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
