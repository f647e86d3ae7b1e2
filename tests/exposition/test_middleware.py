"""The ASGI middleware: request timing, per-request attribution, /metrics, cardinality."""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import AsyncIterator

import httpx
import pytest
from fastapi import BackgroundTasks, FastAPI
from fastapi.responses import StreamingResponse
from tortoise import Tortoise

import poolwatch
from poolwatch import PoolWatch
from tests.metrics_helpers import total, value
from tests.tortoise_models import Author

OPS = "db_client_operation_duration_seconds_count"
SECRET = "p4ram-v4lue-never-exported"


class AppError(Exception):
    """An exception of the app's own."""


def build_app(watch: PoolWatch) -> FastAPI:
    app = FastAPI()
    watch.instrument_app(app)
    background_done = asyncio.Event()
    app.state.background_done = background_done

    async def one_query(name: str = "x") -> None:
        await Author.filter(name=name).first()

    @app.get("/authors/{author_id}")
    async def author(author_id: int, n: int = 1) -> dict[str, int]:
        for _ in range(n):
            await one_query(SECRET)
            await asyncio.sleep(0)  # let concurrent requests interleave
        return {"id": author_id}

    @app.get("/gather")
    async def gather() -> dict[str, int]:
        await asyncio.gather(*(one_query() for _ in range(4)))
        return {}

    @app.get("/background")
    async def background(tasks: BackgroundTasks) -> dict[str, int]:
        async def later() -> None:
            await one_query()
            await one_query()

        tasks.add_task(later)
        return {}

    @app.get("/detached")
    async def detached() -> dict[str, int]:
        async def fire_and_forget() -> None:
            await asyncio.sleep(0.01)
            await one_query()
            background_done.set()

        app.state.task = asyncio.create_task(fire_and_forget())
        return {}

    @app.get("/sync")
    def sync_endpoint() -> dict[str, str]:
        return {"route": poolwatch.current_route()}

    @app.get("/boom")
    async def boom() -> None:
        await one_query()
        raise AppError("the app's own failure")

    @app.get("/stream")
    async def stream() -> StreamingResponse:
        async def chunks() -> AsyncIterator[bytes]:
            for _ in range(3):
                await asyncio.sleep(0.02)
                yield b"chunk"

        return StreamingResponse(chunks())

    return app


@pytest.fixture
async def client(watch: PoolWatch) -> AsyncIterator[httpx.AsyncClient]:
    await Tortoise.init(db_url="sqlite://:memory:", modules={"models": ["tests.tortoise_models"]})
    await Tortoise.generate_schemas()
    app = build_app(watch)
    transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
    async with httpx.AsyncClient(transport=transport, base_url="http://test") as c:
        c.app = app  # type: ignore[attr-defined]
        yield c
    await Tortoise.close_connections()


async def test_concurrent_requests_never_leak_into_each_other(
    watch: PoolWatch, client: httpx.AsyncClient
) -> None:
    sizes = [random.Random(i).randint(1, 6) for i in range(40)]
    await asyncio.gather(
        *(client.get(f"/authors/{i}", params={"n": n}) for i, n in enumerate(sizes))
    )
    route = "/authors/{author_id}"
    assert value(watch.registry, OPS, pool="default", operation="SELECT", route=route) == sum(sizes)
    assert value(watch.registry, "poolwatch_request_queries_sum", route=route) == sum(sizes)
    assert value(watch.registry, "poolwatch_request_queries_count", route=route) == 40
    # Each request's own count lands in its own bucket: 1..6 queries, never a mix.
    for le, expected in ((1.0, sizes.count(1)), (3.0, sum(s <= 3 for s in sizes))):
        bucket = value(watch.registry, "poolwatch_request_queries_bucket", route=route, le=str(le))
        assert bucket == expected
    assert (
        value(
            watch.registry,
            "http_server_request_duration_seconds_count",
            method="GET",
            route=route,
            status="200",
        )
        == 40
    )


async def test_gather_children_background_and_detached_tasks(
    watch: PoolWatch, client: httpx.AsyncClient
) -> None:
    await client.get("/gather")
    await client.get("/background")
    await client.get("/detached")
    await asyncio.wait_for(client.app.state.background_done.wait(), 5)  # type: ignore[attr-defined]
    assert total(watch.registry, OPS, route="/gather") == 4
    assert total(watch.registry, OPS, route="/background") == 2
    # Queries of BackgroundTasks run after the response yet count for their request.
    assert value(watch.registry, "poolwatch_request_queries_sum", route="/background") == 2
    assert total(watch.registry, OPS, route="/detached") == 1
    assert total(watch.registry, OPS, route="none", operation="SELECT") == 0


async def test_sync_endpoint_in_threadpool_sees_its_route(client: httpx.AsyncClient) -> None:
    response = await client.get("/sync")
    assert response.json() == {"route": "/sync"}


async def test_app_exceptions_pass_through_unchanged(
    watch: PoolWatch, client: httpx.AsyncClient
) -> None:
    app = client.app  # type: ignore[attr-defined]
    transport = httpx.ASGITransport(app=app, raise_app_exceptions=True)
    async with httpx.AsyncClient(transport=transport, base_url="http://test") as strict:
        with pytest.raises(AppError, match="the app's own failure"):
            await strict.get("/boom")
    assert (
        value(
            watch.registry,
            "http_server_request_duration_seconds_count",
            method="GET",
            route="/boom",
            status="500",
        )
        == 1
    )
    assert total(watch.registry, OPS, route="/boom") == 1
    assert value(watch.registry, "poolwatch_internal_errors_total", component="middleware") == 0


async def test_streaming_duration_ends_with_the_last_chunk(
    watch: PoolWatch, client: httpx.AsyncClient
) -> None:
    response = await client.get("/stream")
    assert response.content == b"chunk" * 3
    labels = {"method": "GET", "route": "/stream", "status": "200"}
    elapsed = value(watch.registry, "http_server_request_duration_seconds_sum", **labels)
    assert elapsed >= 0.06


async def test_unknown_urls_add_no_series_beyond_unmatched(
    watch: PoolWatch, client: httpx.AsyncClient
) -> None:
    rng = random.Random(7)
    for _ in range(10_000):
        path = "/" + "/".join(str(rng.getrandbits(40)) for _ in range(rng.randint(1, 3)))
        method = rng.choice(["GET", "POST", "BREW"])
        await client.request(method, path)
    routes = set()
    methods = set()
    for family in watch.registry.collect():
        for sample in family.samples:
            # Schema creation ran outside any request (route="none"); requests add only
            # "unmatched".
            if "route" in sample.labels and sample.labels["route"] != "none":
                routes.add(sample.labels["route"])
            if "method" in sample.labels:
                methods.add(sample.labels["method"])
    assert routes == {"unmatched"}
    assert methods == {"GET", "POST", "_OTHER"}


async def test_metrics_endpoint(watch: PoolWatch, client: httpx.AsyncClient) -> None:
    await client.get("/authors/1")
    response = await client.get("/metrics")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain")
    assert "db_client_connection_count{" in response.text
    assert SECRET not in response.text
    openmetrics = await client.get(
        "/metrics", headers={"accept": "application/openmetrics-text; version=1.0.0"}
    )
    assert openmetrics.headers["content-type"].startswith("application/openmetrics-text")
    assert openmetrics.text.endswith("# EOF\n")
    head = await client.head("/metrics")
    assert head.status_code == 200
    assert head.content == b""
    assert int(head.headers["content-length"]) > 0
    assert (await client.post("/metrics")).status_code == 405
    # Scrapes are not requests of the app.
    assert total(watch.registry, "http_server_request_duration_seconds_count") == 1


async def test_metrics_path_is_configurable_and_can_be_off() -> None:
    watch = PoolWatch(metrics_path="/internal/prom", exclude_paths=("/healthz",))
    app = FastAPI()

    @app.get("/healthz")
    async def health() -> str:
        return "ok"

    watch.instrument_app(app)
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://test") as c:
        assert (await c.get("/healthz")).status_code == 200
        assert (await c.get("/internal/prom")).status_code == 200
        assert (await c.get("/metrics")).status_code == 404
    assert (
        total(watch.registry, "http_server_request_duration_seconds_count", route="/healthz") == 0
    )
    watch.uninstrument()

    hidden = PoolWatch(expose_metrics=False)
    app2 = FastAPI()
    hidden.instrument_app(app2)
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app2), base_url="http://test"
    ) as c:
        assert (await c.get("/metrics")).status_code == 404
    hidden.uninstrument()


async def test_internal_fault_counted_logged_once_never_raised(
    watch: PoolWatch, client: httpx.AsyncClient, caplog: pytest.LogCaptureFixture
) -> None:
    def broken(*labels: str) -> None:
        raise RuntimeError("poolwatch bug")

    watch.metrics.http_duration.labels = broken  # type: ignore[method-assign]
    caplog.set_level(logging.DEBUG, logger="poolwatch")
    for i in range(3):
        response = await client.get(f"/authors/{i}")
        assert response.status_code == 200
    assert value(watch.registry, "poolwatch_internal_errors_total", component="middleware") == 3
    records = [r for r in caplog.records if r.name == "poolwatch"]
    assert len(records) == 1
    assert "middleware" in records[0].getMessage()
    assert all(SECRET not in r.getMessage() for r in records)


async def test_uninstrument_turns_middleware_into_pass_through(
    watch: PoolWatch, client: httpx.AsyncClient
) -> None:
    watch.uninstrument()
    response = await client.get("/sync")
    assert response.json() == {"route": "none"}
    assert (await client.get("/metrics")).status_code == 404
    assert total(watch.registry, "http_server_request_duration_seconds_count") == 0


async def test_sync_endpoint_queries_count_for_their_route() -> None:
    from sqlalchemy import create_engine, text

    engine = create_engine("sqlite://")
    watch = PoolWatch()
    watch.instrument_sqlalchemy(engine, pool="main")
    app = FastAPI()
    watch.instrument_app(app)

    @app.get("/reports/{report_id}")
    def report(report_id: int) -> dict[str, int]:  # runs in Starlette's threadpool
        with engine.connect() as conn:
            for _ in range(3):
                conn.execute(text("SELECT :id"), {"id": report_id}).all()
        return {"id": report_id}

    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://test") as c:
        await asyncio.gather(*(c.get(f"/reports/{i}") for i in range(5)))
    route = "/reports/{report_id}"
    assert value(watch.registry, OPS, pool="main", operation="SELECT", route=route) == 15
    assert value(watch.registry, "poolwatch_request_queries_sum", route=route) == 15
    assert value(watch.registry, "db_client_connection_count", pool="main", state="used") == 0
    watch.uninstrument()
    engine.dispose()
