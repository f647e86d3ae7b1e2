"""The demo app: the N+1 endpoint shows its cost in the metrics, its twin does not."""

from __future__ import annotations

import inspect

import httpx

from poolwatch import PoolWatch
from poolwatch.demo import app as demo_app
from poolwatch.demo.app import create_app
from tests.findings_helpers import without_slow
from tests.metrics_helpers import value


async def test_demo_nplusone_and_its_prefetch_twin() -> None:
    watch = PoolWatch()
    app = create_app("sqlite://:memory:", watch=watch)
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://demo") as client:
            slow = (await client.get("/posts/nplusone")).json()
            fast = (await client.get("/posts")).json()
            assert slow == fast
            assert len(fast) == 20
            created = await client.post("/posts/1/comments", params={"text": "hello"})
            assert created.status_code == 201
            assert (await client.get("/authors/999")).status_code == 404
            scrape = (await client.get("/metrics")).text
    queries = "poolwatch_request_queries_sum"
    assert value(watch.registry, queries, route="/posts/nplusone") == 21  # 1 + 20 authors
    assert value(watch.registry, queries, route="/posts") == 2  # posts, then all authors
    assert 'db_client_connection_count{pool="default",state="used"} 0.0' in scrape
    assert 'db_client_connection_max{pool="default"} 1.0' in scrape
    assert "hello" not in scrape


def _line_of(marker: str) -> int:
    source = inspect.getsource(demo_app).splitlines()
    return next(number for number, line in enumerate(source, 1) if marker in line)


async def test_demo_nplusone_is_one_finding_at_the_loop_suggesting_prefetch() -> None:
    watch = PoolWatch()
    app = create_app("sqlite://:memory:", watch=watch)
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://demo") as client:
            await client.get("/posts/nplusone")
            await client.get("/posts")
            served = (await client.get("/poolwatch/findings")).json()["findings"]
    (finding,) = without_slow(served)
    line = _line_of("# one SELECT per post: the N+1")
    assert finding["kind"] == "nplusone"
    assert finding["route"] == "/posts/nplusone"
    assert finding["count"] == 20
    assert (
        finding["call_site"]
        == f"poolwatch/demo/app.py:{line} in _add_routes.<locals>.posts_nplusone"
    )
    assert 'Post.all().prefetch_related("author")' in finding["suggestion"]
    assert value(watch.registry, "poolwatch_nplusone_total", route="/posts/nplusone") == 1
    assert value(watch.registry, "poolwatch_nplusone_total", route="/posts") == 0
