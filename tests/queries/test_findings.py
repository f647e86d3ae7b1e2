"""Findings end to end: counters, log lines, /poolwatch/findings, modes and allow-lists."""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import AsyncIterator, Iterator

import httpx
import pytest
from fastapi import FastAPI
from prometheus_client import generate_latest
from sqlalchemy import Engine, create_engine, text

import poolwatch
from poolwatch import Finding, NPlusOneError, PoolWatch
from poolwatch.queries.findings import FindingsLog, FindingsLogger, log_line
from tests.findings_helpers import NEVER_SLOW
from tests.metrics_helpers import value

SECRET = "s3cret-findings-value"


def finding(kind: str = "nplusone", route: str = "/r", count: int = 5) -> Finding:
    return Finding(
        kind, route, "select * from t where id = ?", count, 0.01, "a.py:1 in f", "", "main"
    )


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_findings_log_aggregates_newest_first_and_is_bounded() -> None:
    clock = FakeClock()
    log = FindingsLog(capacity=2, clock=clock)
    log.add(finding(route="/a", count=5))
    clock.now += 10
    log.add(finding(route="/b"))
    clock.now += 10
    log.add(finding(route="/a", count=9))
    recent = log.recent()
    assert [(f["route"], f["occurrences"], f["max_count"]) for f in recent] == [
        ("/a", 2, 9),
        ("/b", 1, 5),
    ]
    assert recent[0]["first_seen"] == "1970-01-01T00:16:40Z"
    assert recent[0]["last_seen"] == "1970-01-01T00:17:00Z"
    log.add(finding(route="/c"))
    assert [f["route"] for f in log.recent()] == ["/c", "/a"]  # /b was the oldest


def test_findings_logger_logs_first_then_rate_limits(caplog: pytest.LogCaptureFixture) -> None:
    clock = FakeClock()
    logger = FindingsLogger(interval=60, clock=clock)
    caplog.set_level(logging.WARNING, "poolwatch.findings")
    assert logger.log(finding())
    assert not logger.log(finding())
    assert logger.log(finding(route="/other"))  # another route: another place to look
    assert not logger.log(finding(route="/other"))
    assert logger.log(finding(kind="duplicate"))
    clock.now += 61
    assert logger.log(finding())
    messages = [r.getMessage() for r in caplog.records]
    assert len(messages) == 4
    assert messages[3].endswith("(1 more since the last report)")
    assert caplog.records[0].poolwatch_finding["call_site"] == "a.py:1 in f"  # type: ignore[attr-defined]


# -- end to end, on a small SQLAlchemy app ----------------------------------------------


@pytest.fixture
def engine() -> Iterator[Engine]:
    engine = create_engine("sqlite://")
    with engine.begin() as conn:
        conn.execute(text("CREATE TABLE item (id INTEGER PRIMARY KEY, name TEXT)"))
        conn.execute(text("INSERT INTO item VALUES (1, 'a'), (2, 'b'), (3, 'c'), (4, 'd')"))
    yield engine
    engine.dispose()


def loop(engine: Engine, n: int = 6) -> None:
    with engine.connect() as conn:
        for i in range(n):
            conn.execute(text("SELECT name FROM item WHERE id = :id"), {"id": i})


def fail_after_loop(engine: Engine) -> None:
    loop(engine)
    raise KeyError("own")


def build(engine: Engine, watch: PoolWatch) -> FastAPI:
    app = FastAPI()
    watch.instrument_app(app)

    @app.get("/loop")
    async def loop_route() -> dict[str, str]:
        loop(engine)
        return {}

    @app.post("/loop")
    async def loop_post() -> dict[str, str]:
        loop(engine)
        return {}

    @app.get("/clean")
    async def clean() -> dict[str, str]:
        with engine.connect() as conn:
            conn.execute(text("SELECT name FROM item WHERE name = :n"), {"n": SECRET})
        return {}

    @app.get("/twice")
    async def twice() -> dict[str, str]:
        with engine.connect() as conn:
            conn.execute(text("SELECT name FROM item WHERE name = :n"), {"n": SECRET})
            conn.execute(text("SELECT name FROM item WHERE name = :n"), {"n": SECRET})
        return {}

    @app.get("/slow")
    async def slow() -> dict[str, str]:
        with engine.connect() as conn:
            conn.execute(text("WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c "
                              "WHERE x < 300000) SELECT count(*) FROM c"))  # fmt: skip
        return {}

    @app.get("/boom")
    async def boom() -> None:
        loop(engine)
        raise RuntimeError("the app's own error")

    @app.get("/detached")
    async def detached() -> dict[str, str]:
        async def later() -> None:
            await asyncio.sleep(0.01)
            loop(engine)

        app.state.task = asyncio.create_task(later())
        return {}

    return app


@pytest.fixture
def watch(engine: Engine, request: pytest.FixtureRequest) -> Iterator[PoolWatch]:
    # The slow-query test asks for a threshold its statement passes; the others get one
    # that none reaches, so a loaded machine adds no slow query to what they compare.
    watch = PoolWatch(slow_query_threshold=getattr(request, "param", NEVER_SLOW))
    watch.instrument_sqlalchemy(engine)
    yield watch
    watch.uninstrument()


@pytest.fixture
async def client(engine: Engine, watch: PoolWatch) -> AsyncIterator[httpx.AsyncClient]:
    app = build(engine, watch)
    transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
    async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
        client.app = app  # type: ignore[attr-defined]
        yield client


async def test_counters_count_requests_with_findings_and_start_at_zero(
    watch: PoolWatch, client: httpx.AsyncClient
) -> None:
    for path in ("/loop", "/loop", "/clean", "/twice"):
        assert (await client.get(path)).status_code == 200
    registry = watch.registry
    assert value(registry, "poolwatch_nplusone_total", route="/loop") == 2
    assert value(registry, "poolwatch_nplusone_total", route="/clean") == 0
    assert value(registry, "poolwatch_duplicate_queries_total", route="/twice") == 1
    assert value(registry, "poolwatch_duplicate_queries_total", route="/loop") == 0
    assert value(registry, "poolwatch_slow_queries_total", route="/clean") == 0


async def test_findings_endpoint_lists_aggregated_findings_without_values(
    watch: PoolWatch, client: httpx.AsyncClient
) -> None:
    await client.get("/loop")
    await client.get("/loop")
    await client.get("/twice")
    response = await client.get("/poolwatch/findings")
    assert response.headers["content-type"] == "application/json"
    body = response.json()["findings"]
    assert [(f["kind"], f["route"], f["occurrences"]) for f in body] == [
        ("duplicate", "/twice", 1),
        ("nplusone", "/loop", 2),
    ]
    nplusone = body[1]
    assert nplusone["count"] == 6
    assert nplusone["fingerprint"] == "select ... from item where id = ?"
    assert nplusone["call_site"].startswith("tests/queries/test_findings.py:")
    assert nplusone["call_site"].endswith(" in loop")
    assert SECRET not in response.text
    assert SECRET not in generate_latest(watch.registry).decode()
    assert body == watch.findings()
    head = await client.head("/poolwatch/findings")
    assert (head.status_code, head.content) == (200, b"")


async def test_findings_name_the_method_a_get_and_a_post_are_two_places(
    watch: PoolWatch, client: httpx.AsyncClient, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.WARNING, logger="poolwatch.findings"):
        assert (await client.get("/loop")).status_code == 200
        assert (await client.post("/loop")).status_code == 200
    body = (await client.get("/poolwatch/findings")).json()["findings"]
    assert sorted((f["method"], f["route"], f["kind"]) for f in body) == [
        ("GET", "/loop", "nplusone"),
        ("POST", "/loop", "nplusone"),
    ]
    assert "nplusone on GET /loop: 6 x 'select ... from item where id = ?'" in caplog.text
    assert (await client.post("/poolwatch/findings")).status_code == 405


@pytest.mark.parametrize("watch", [0.02], indirect=True)  # slow_query_threshold
async def test_slow_queries_are_counted_and_listed(
    watch: PoolWatch, client: httpx.AsyncClient
) -> None:
    await client.get("/slow")
    assert value(watch.registry, "poolwatch_slow_queries_total", route="/slow") == 1
    (slow,) = watch.findings()
    assert slow["kind"] == "slow_query"
    assert slow["call_site"].endswith(".slow")
    assert "EXPLAIN" in slow["suggestion"]


async def test_a_task_outliving_its_request_still_reports_its_loop(
    watch: PoolWatch, client: httpx.AsyncClient
) -> None:
    await client.get("/detached")
    await client.app.state.task  # type: ignore[attr-defined]
    assert value(watch.registry, "poolwatch_nplusone_total", route="/detached") == 1
    (found,) = watch.findings()
    assert (found["kind"], found["route"], found["count"]) == ("nplusone", "/detached", 5)


async def test_findings_path_can_be_switched_off(engine: Engine) -> None:
    watch = PoolWatch(expose_findings=False)
    watch.instrument_sqlalchemy(engine)
    app = FastAPI()
    watch.instrument_app(app)
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
        assert (await client.get("/poolwatch/findings")).status_code == 404
    watch.uninstrument()


async def test_raise_mode_raises_after_the_response_but_never_hides_app_errors(
    engine: Engine,
) -> None:
    watch = PoolWatch(nplusone_mode="raise")
    watch.instrument_sqlalchemy(engine)
    app = build(engine, watch)
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
        with pytest.raises(
            NPlusOneError, match=r"1 query finding\(s\) in GET /loop:\n  - nplusone on GET /loop"
        ):
            await client.get("/loop")
        assert (await client.get("/clean")).status_code == 200
        with pytest.raises(RuntimeError, match="the app's own error"):
            await client.get("/boom")
    watch.uninstrument()


def test_scope_blocks_are_judged_and_raise_in_raise_mode(engine: Engine) -> None:
    watch = PoolWatch(nplusone_mode="raise")
    watch.instrument_sqlalchemy(engine)
    with pytest.raises(NPlusOneError) as caught, poolwatch.scope("nightly"):
        loop(engine)
    (found,) = caught.value.findings
    assert (found.kind, found.route, found.count) == ("nplusone", "nightly", 6)
    assert isinstance(caught.value, AssertionError)
    with poolwatch.scope("nightly"), poolwatch.allow_nplusone():
        loop(engine)
    with pytest.raises(KeyError), poolwatch.scope("nightly"):  # the block's own error wins
        fail_after_loop(engine)
    assert value(watch.registry, "poolwatch_nplusone_total", route="nightly") == 2
    watch.uninstrument()


def test_allow_lists_and_off_mode(engine: Engine) -> None:
    allowed = PoolWatch(allow_routes=("night*",), nplusone_mode="raise")
    allowed.instrument_sqlalchemy(engine, pool="a")
    with poolwatch.scope("nightly"):
        loop(engine)
    allowed.uninstrument()
    off = PoolWatch(nplusone_mode="off")
    off.instrument_sqlalchemy(engine, pool="b")
    with poolwatch.scope("nightly"):
        loop(engine)
    assert off.findings() == []
    assert "poolwatch_nplusone_total{" not in generate_latest(off.registry).decode()
    off.uninstrument()


def test_log_line_per_finding(engine: Engine, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, "poolwatch.findings")
    watch = PoolWatch(slow_query_threshold=NEVER_SLOW)  # the N+1's line alone
    watch.instrument_sqlalchemy(engine)
    for _ in range(3):
        with poolwatch.scope("job"):
            loop(engine)
    watch.uninstrument()
    (record,) = caplog.records
    message = record.getMessage()
    assert message.startswith("poolwatch nplusone on job: 6 x 'select ... from item where id")
    assert "\n" not in message
    assert (
        " in test_log_line_per_finding -> tests/queries/test_findings.py:" in message
    )  # the caller
    assert message.endswith(" in loop")  # the loop
    finding = record.poolwatch_finding  # type: ignore[attr-defined]
    assert json.dumps(finding)
    assert finding["suggestion"].startswith("The same query runs once per value of item.id")


def test_a_log_line_keeps_the_whole_call_path_and_clips_the_rest() -> None:
    # The loop is a middle frame (the service's for-loop between the endpoint and the
    # repository): a path cut to its first and last frames hid the very line to fix.
    frames = [
        "app/api/routes/articles.py:41 in list_articles",
        "app/services/article.py:136 in list_articles",  # the loop
        *(f"app/services/helpers_{i}.py:{i} in helper_{i}" for i in range(4)),
        "app/repositories/favorite.py:27 in count",
    ]
    long = Finding(
        kind="nplusone",
        route="/api/v1/" + "x" * 200,
        fingerprint="select ... from t where " + " and ".join(f"c{i} = ?" for i in range(60)),
        count=7,
        duration=0.5,
        call_site="app/repositories/favorite.py:27 in count",
        suggestion="s" * 500,
        pool="main",
        method="GET",
        call_path=" -> ".join(frames),
    )
    line = log_line(long)
    assert line.endswith(" at " + " -> ".join(frames))  # every frame, in order
    assert "x" * 100 not in line  # the route is clipped
    assert " and ".join(f"c{i} = ?" for i in range(20)) not in line  # so is the statement
    assert "s" * 50 not in line  # the suggestion is in the extra


def test_a_log_line_of_a_chain_says_how_many_queries_along_it() -> None:
    chain = Finding(
        kind="nplusone",
        route="/members",
        fingerprint="select ... from squad where squad.id = ?",
        count=24,
        duration=0.01,
        call_site="app.py:73 in members",
        suggestion="",
        pool="main",
        method="GET",
        call_path="app.py:73 in members",
        relations=("Member.squad", "Squad.city"),
    )
    assert log_line(chain).startswith(
        "nplusone on GET /members: 24 queries along Member.squad -> Squad.city, the first "
        "'select ... from squad where squad.id = ?' (10.0 ms) at app.py:73 in members"
    )


def test_each_watch_judging_a_scope_counts_it_in_its_own_registry(engine: Engine) -> None:
    first = PoolWatch()
    first.instrument_sqlalchemy(engine, pool="one")
    second = PoolWatch()
    second.instrument_sqlalchemy(create_engine("sqlite://"), pool="two")
    with poolwatch.scope("job"):
        loop(engine)
    assert value(first.registry, "poolwatch_nplusone_total", route="job") == 1
    assert value(second.registry, "poolwatch_nplusone_total", route="job") == 1
    first.uninstrument()
    second.uninstrument()
