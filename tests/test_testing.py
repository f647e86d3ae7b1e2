"""poolwatch.testing: capture() and assert_max_queries() as a user's test suite uses them."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import httpx
import pytest
from fastapi import FastAPI
from sqlalchemy import Engine, create_engine, text
from sqlalchemy.pool import StaticPool

import poolwatch
from poolwatch import NPlusOneError, PoolWatch
from poolwatch.testing import assert_max_queries, capture
from tests.findings_helpers import without_slow


@pytest.fixture
def engine() -> Iterator[Engine]:
    # One shared in-memory database, also for the threadpool that runs sync endpoints.
    engine = create_engine(
        "sqlite://", poolclass=StaticPool, connect_args={"check_same_thread": False}
    )
    watch = PoolWatch(nplusone_mode="off")  # tests judge with capture(), not the app
    watch.instrument_sqlalchemy(engine)
    with engine.begin() as conn:
        conn.execute(text("CREATE TABLE item (id INTEGER PRIMARY KEY, name TEXT)"))
        conn.execute(text("INSERT INTO item VALUES (1, 'a'), (2, 'b'), (3, 'c')"))
    yield engine
    watch.uninstrument()
    engine.dispose()


def by_id(engine: Engine, ids: range | list[int]) -> None:
    with engine.connect() as conn:
        for i in ids:
            conn.execute(text("SELECT name FROM item WHERE id = :id"), {"id": i})


def test_capture_sees_statements_and_judges_with_test_thresholds(engine: Engine) -> None:
    with capture() as captured:
        by_id(engine, [1, 2])
    assert [q.fingerprint for q in captured.queries] == ["select ... from item where id = ?"] * 2
    assert all(q.call_site.endswith(" in by_id") for q in captured.queries)
    # the path runs from the test (the outermost application frame) to the loop
    assert all(
        q.call_path.endswith(" in test_capture_sees_statements_and_judges_with_test_thresholds"
                             f" -> {q.call_site}")
        for q in captured.queries
    )  # fmt: skip
    (finding,) = captured.nplusone
    assert finding.count == 2
    assert finding.route == "capture"
    assert "2 queries:" in captured.report()


def test_capture_leaves_out_bookkeeping_statements(engine: Engine) -> None:
    with capture() as captured, engine.begin() as conn:
        conn.execute(text("UPDATE item SET name = 'z' WHERE id = 1"))
    assert [q.operation for q in captured.queries] == ["UPDATE"]


async def test_async_capture_raise_on_findings(engine: Engine) -> None:
    with pytest.raises(NPlusOneError, match="nplusone on loop-check"):
        async with capture(name="loop-check", raise_on_findings=True):
            by_id(engine, [1, 2, 3])
    async with capture(raise_on_findings=True) as clean:
        by_id(engine, [1])
    assert without_slow(clean.findings) == []


def test_allow_nplusone_inside_capture(engine: Engine) -> None:
    with capture() as captured, poolwatch.allow_nplusone():
        by_id(engine, [1, 2, 3])
    assert len(captured.queries) == 3
    assert without_slow(captured.findings) == []


def test_assert_max_queries_lists_each_query_with_its_call_site(engine: Engine) -> None:
    with assert_max_queries(3):
        by_id(engine, [1, 2, 3])
    with pytest.raises(AssertionError) as failed, assert_max_queries(1):
        by_id(engine, [1, 2])
    message = str(failed.value)
    assert message.startswith("expected at most 1 queries, got 2 queries:")
    assert "  1. select ... from item where id = ?  [tests/test_testing.py:" in message
    with pytest.raises(ValueError, match="limit=-1"):
        assert_max_queries(-1)


async def test_requests_in_the_block_are_judged_one_by_one(engine: Engine) -> None:
    app = FastAPI()
    watch = PoolWatch(nplusone_mode="off")
    watch.instrument_app(app)

    @app.get("/one/{item_id}")
    def one(item_id: int) -> dict[str, int]:  # a sync endpoint, run in the threadpool
        by_id(engine, [item_id])
        return {}

    @app.get("/many")
    async def many() -> dict[str, int]:
        await asyncio.to_thread(by_id, engine, [1, 2, 3])
        return {}

    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
        with capture() as captured:
            for item_id in (1, 2, 3):  # three requests of one query each: no N+1
                await client.get(f"/one/{item_id}")
        assert len(captured.queries) == 3
        assert without_slow(captured.findings) == []
        with capture() as captured:
            await client.get("/many")
        found = without_slow(captured.findings)
        assert [(f.kind, f.route, f.count) for f in found] == [("nplusone", "/many", 3)]
    watch.uninstrument()


def test_capture_allow_lists(engine: Engine) -> None:
    with capture(allow_call_sites=("*:* in by_id",)) as captured:  # any frame of the path
        by_id(engine, [1, 2, 3])
    assert without_slow(captured.findings) == []
    with capture(allow_fingerprints=("select ... from item *",)) as captured:
        by_id(engine, [1, 2, 3])
    assert without_slow(captured.findings) == []
