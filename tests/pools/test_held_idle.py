"""The time a checked-out connection ran no statement, on both ORMs: held across an
``await`` of something else, a ``time.sleep`` in a worker thread, or not at all.

The truth is the test's own sleeps and clock: a connection held across a 0.3 s sleep was
idle for at least 0.3 s, and for no longer than the block the test timed around the
checkout, less its statements' own time (disjoint parts of the hold, which lies inside
that block). No bound depends on how fast the machine is: a loaded machine stretches the
block the test timed as much as the hold inside it.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from tortoise import Tortoise, connections
from tortoise.backends.base.executor import EXECUTOR_CACHE
from tortoise.transactions import in_transaction

from poolwatch import PoolWatch
from poolwatch.pools import observer
from poolwatch.pools.held_idle import HeldIdleReport
from tests.findings_helpers import without_slow
from tests.metrics_helpers import total, value

NAP = 0.3
PG_SLEEP = 0.05  # a statement's least time, slept by the server


def _idle(watch: PoolWatch, pool: str, route: str) -> tuple[float, float]:
    """(count, sum) of the idle-while-held histogram."""
    name = "poolwatch_connection_idle_seconds"
    labels = {"pool": pool, "route": route}
    return (
        value(watch.registry, f"{name}_count", **labels),
        value(watch.registry, f"{name}_sum", **labels),
    )


def _statements(watch: PoolWatch, pool: str, route: str) -> float:
    """Seconds the route's statements on ``pool`` ran, as poolwatch timed them: the sum
    of its query-duration histogram, every operation."""
    name = "db_client_operation_duration_seconds_sum"
    return total(watch.registry, name, pool=pool, route=route)


def _held(watch: PoolWatch, pool: str) -> tuple[float, float]:
    """(count, sum) of ``pool``'s checkouts' holds, every route's, so far."""
    name = "db_client_connection_use_time_seconds"
    return (
        value(watch.registry, f"{name}_count", pool=pool),
        value(watch.registry, f"{name}_sum", pool=pool),
    )


def _warm(engine: Any, connections: int) -> None:
    """Open ``connections`` connections of a sync engine and put them back: the dialect's
    first-connect statements (its version, its settings) run before it is instrumented,
    outside any checkout, and the test's statements are all inside one."""
    opened = [engine.connect() for _ in range(connections)]
    for connection in opened:
        connection.close()


@pytest.fixture
async def tortoise_pg(pg_database: str) -> AsyncIterator[Any]:
    EXECUTOR_CACHE.clear()
    url = "asyncpg://" + pg_database.split("://", 1)[1] + "?maxsize=4"
    await Tortoise.init(db_url=url, modules={"models": ["tests.tortoise_models"]})
    await Tortoise.generate_schemas()
    try:
        yield connections.get("default")
    finally:
        await Tortoise.close_connections()


async def test_tortoise_a_transaction_held_across_a_sleep_is_idle_for_the_sleep(
    watch: PoolWatch, tortoise_pg: Any
) -> None:
    import poolwatch

    with poolwatch.scope("POST /orders"):
        started = time.perf_counter()
        async with in_transaction() as connection:
            await connection.execute_query("SELECT 1")
            await asyncio.sleep(NAP)  # an outbound call, with the transaction open
            await connection.execute_query("SELECT 2")
        elapsed = time.perf_counter() - started  # the checkout lies inside
    count, idle = _idle(watch, "default", "POST /orders")
    assert count == 1
    assert NAP <= idle <= elapsed - _statements(watch, "default", "POST /orders")


async def test_tortoise_statements_that_take_their_own_connection_are_never_idle(
    watch: PoolWatch, tortoise_pg: Any
) -> None:
    import poolwatch

    _, held_before = _held(watch, "default")  # the schema's set-up held connections too
    with poolwatch.scope("GET /orders"):
        for _ in range(5):
            await tortoise_pg.execute_query(f"SELECT pg_sleep({PG_SLEEP})")
    held = _held(watch, "default")[1] - held_before
    count, idle = _idle(watch, "default", "GET /orders")
    assert count == 5
    # Each checkout is its statement: the server slept PG_SLEEP inside each hold (the
    # statement was sent after the acquire and answered before the release), and none of
    # that may be idle. Counted as idle, it would leave each checkout's idle time its
    # whole hold, more than this bound; whatever a loaded machine adds to a hold, it adds
    # to both sides. (An interval the test timed around the loop would not tell: the
    # loop's own time between statements is unbounded on a loaded machine.)
    assert idle <= held - 5 * PG_SLEEP, (idle, held)


async def test_tortoise_a_statements_own_connection_is_not_read_for_gaps(
    make_watch: Any, tortoise_pg: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    # With findings on: a statement that takes its own connection gives it back before
    # it returns, so no application code runs while it is held. Its checkout walks no
    # stack for the line that took it and samples no CPU time; a transaction's does.
    import poolwatch

    watch = make_watch(nplusone_mode="log")
    watch.instrument_tortoise()
    samples: list[int] = []
    walks: list[int] = []
    usage, call_path = observer.thread_usage, HeldIdleReport.call_path
    monkeypatch.setattr(observer, "thread_usage", lambda: samples.append(1) or usage())
    monkeypatch.setattr(
        HeldIdleReport, "call_path", lambda report: walks.append(1) or call_path(report)
    )
    with poolwatch.scope("GET /orders"):
        for _ in range(5):
            await tortoise_pg.execute_query("SELECT 1")
    assert (samples, walks) == ([], [])
    with poolwatch.scope("POST /orders"):
        async with in_transaction() as connection:
            await connection.execute_query("SELECT 1")
    assert samples
    assert walks


@pytest.fixture
def sqlite_url(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'held.sqlite'}"


async def test_sqlalchemy_async_session_held_across_a_sleep(tmp_path: Path) -> None:
    from sqlalchemy import text
    from sqlalchemy.ext.asyncio import AsyncSession, create_async_engine

    import poolwatch

    engine = create_async_engine(f"sqlite+aiosqlite:///{tmp_path / 'held.sqlite'}")
    watch = PoolWatch()
    watch.instrument_sqlalchemy(engine)
    try:
        with poolwatch.scope("POST /checkout"):
            started = time.perf_counter()
            async with AsyncSession(engine) as session:
                await session.execute(text("SELECT 1"))
                await asyncio.sleep(NAP)  # each statement runs in a greenlet of its own
                await session.execute(text("SELECT 2"))
                await session.commit()
            slow = time.perf_counter() - started  # the checkout lies inside
        with poolwatch.scope("GET /fast"):
            started = time.perf_counter()
            async with AsyncSession(engine) as session:
                await session.execute(text("SELECT 1"))
            fast = time.perf_counter() - started
    finally:
        watch.uninstrument()
        await engine.dispose()
    count, idle = _idle(watch, "main", "POST /checkout")
    assert count == 1
    assert NAP <= idle <= slow - _statements(watch, "main", "POST /checkout")
    count, idle = _idle(watch, "main", "GET /fast")
    assert count == 1
    # Its own block's time, not the sleep before it.
    assert idle <= fast - _statements(watch, "main", "GET /fast")


async def test_sqlalchemy_sync_endpoint_holding_a_connection_across_time_sleep(
    sqlite_url: str,
) -> None:
    import httpx
    from fastapi import FastAPI
    from sqlalchemy import create_engine, text
    from sqlalchemy.orm import Session

    engine = create_engine(sqlite_url)
    watch = PoolWatch()
    watch.instrument_sqlalchemy(engine)
    app = FastAPI()

    @app.post("/reports")
    def report() -> dict[str, int]:  # a sync endpoint: FastAPI runs it in a thread
        with Session(engine) as session:
            session.execute(text("SELECT 1"))
            time.sleep(NAP)  # a slow call of another service, connection in hand
            session.execute(text("SELECT 2"))
            session.commit()
        return {"ok": 1}

    transport = httpx.ASGITransport(app=watch.wrap(app))
    try:
        async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
            started = time.perf_counter()
            assert (await client.post("/reports")).status_code == 200
            elapsed = time.perf_counter() - started  # the request, and its checkout, inside
    finally:
        watch.uninstrument()
        engine.dispose()
    count, idle = _idle(watch, "main", "/reports")
    assert count == 1
    assert NAP <= idle <= elapsed - _statements(watch, "main", "/reports")
    (finding,) = [f for f in watch.recorder.recent.recent() if f["kind"] == "held_idle"]
    assert (finding["method"], finding["route"]) == ("POST", "/reports")


def _template_app(engine: Any, endpoint: Callable[[Any], None]) -> Any:
    """The full-stack FastAPI template's shape: a sync dependency yields a Session, a sync
    current-user dependency reads through it, and the sync endpoint runs ``endpoint`` on
    it. FastAPI runs each in a worker thread of its own, and closes the session (the
    release) in another."""
    from fastapi import Depends, FastAPI
    from sqlalchemy import text
    from sqlalchemy.orm import Session

    app = FastAPI()

    def get_db() -> Iterator[Session]:
        with Session(engine) as session:
            yield session

    # Dependencies as defaults, as apps on FastAPI before 0.95 (no Annotated) declare them.
    db = Depends(get_db)

    def current_user(session: Session = db) -> int:
        return int(session.execute(text("SELECT 1")).scalar_one())

    user_dependency = Depends(current_user)

    @app.get("/items/{item_id}")
    def read_item(item_id: int, session: Session = db, user: int = user_dependency) -> Any:
        endpoint(session)
        return {"id": item_id, "user": user}

    return app


async def _get(watch: PoolWatch, app: Any, path: str) -> None:
    import httpx

    transport = httpx.ASGITransport(app=watch.wrap(app))
    async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
        assert (await client.get(path)).status_code == 200


@pytest.mark.postgres
async def test_sqlalchemy_an_endpoint_s_statements_on_its_dependency_s_session_are_not_idle(
    pg_database: str,
) -> None:
    # The session took its connection in the current-user dependency's thread; the
    # endpoint's 0.3 s statement, sent from another thread, is the checkout's statement
    # time, not time it held the connection idle (which made a held_idle finding).
    from sqlalchemy import create_engine, text

    def endpoint(session: Any) -> None:
        session.execute(text("SELECT pg_sleep(:s)"), {"s": NAP})

    engine = create_engine("postgresql+psycopg://" + pg_database.split("://", 1)[1])
    _warm(engine, 1)
    watch = PoolWatch()
    watch.instrument_sqlalchemy(engine)
    try:
        await _get(watch, _template_app(engine, endpoint), "/items/7")
        findings = watch.recorder.recent.recent()
    finally:
        watch.uninstrument()
        engine.dispose()
    count, idle = _idle(watch, "main", "/items/{item_id}")
    assert count == 1
    statements = _statements(watch, "main", "/items/{item_id}")
    assert statements >= NAP  # the endpoint's pg_sleep, timed as a statement
    # The one checkout's idle time is its hold less every statement of the request, the
    # endpoint's included: had that statement, sent from another thread, been counted as
    # idle, the idle time would be its NAP or more above this, however slow the machine.
    # (Equal up to float rounding: the same seconds, summed in another order.)
    checkouts, held = _held(watch, "main")
    assert checkouts == count  # every checkout of the pool was the route's
    assert idle == pytest.approx(held - statements), idle
    assert [f for f in findings if f["kind"] == "held_idle"] == []


async def test_sqlalchemy_an_endpoint_waiting_between_its_statements_names_its_own_lines(
    sqlite_url: str,
) -> None:
    # The wait is between the endpoint's two statements, in its thread: the finding names
    # them, not the dependency's statement and the release.
    from sqlalchemy import create_engine, text

    def endpoint(session: Any) -> None:
        session.execute(text("SELECT id FROM item WHERE id = 2"))
        time.sleep(NAP)  # a slow call of another service, connection in hand
        session.execute(text("SELECT id FROM item WHERE id = 3"))

    engine = create_engine(sqlite_url)
    with engine.begin() as connection:
        connection.execute(text("CREATE TABLE item (id INTEGER PRIMARY KEY)"))
    watch = PoolWatch()
    watch.instrument_sqlalchemy(engine)
    try:
        await _get(watch, _template_app(engine, endpoint), "/items/7")
        findings = watch.recorder.recent.recent()
    finally:
        watch.uninstrument()
        engine.dispose()
    (finding,) = [f for f in findings if f["kind"] == "held_idle"]
    assert finding["route"] == "/items/{item_id}"
    before, after = (finding[k].rsplit(" -> ", 1)[-1] for k in ("before", "call_path"))
    assert before.endswith(".endpoint")
    assert after.endswith(".endpoint")
    line = int(before.split(":", 1)[1].split(" ")[0])
    assert int(after.split(":", 1)[1].split(" ")[0]) == line + 2


# -- the held_idle finding ------------------------------------------------------------------


def _held_idle(findings: list[Any]) -> list[Any]:
    return [f for f in findings if f.kind == "held_idle"]


async def test_tortoise_a_transaction_across_an_outbound_call_is_a_finding_naming_both_lines(
    watch: PoolWatch, tortoise_pg: Any
) -> None:
    import poolwatch
    from poolwatch.testing import capture

    async def outbound_call() -> None:
        await asyncio.sleep(NAP)

    with capture() as captured, poolwatch.scope("POST /orders"):
        started = time.perf_counter()
        async with in_transaction() as connection:
            await connection.execute_query("SELECT * FROM t_author WHERE id = 1")  # before
            await outbound_call()
            await connection.execute_query("SELECT * FROM t_book WHERE id = 2")  # after
        elapsed = time.perf_counter() - started  # the checkout lies inside
    (finding,) = _held_idle(captured.findings)
    assert finding.route == "POST /orders"
    assert finding.pool == "default"
    assert finding.transaction
    assert NAP <= finding.duration <= elapsed - _statements(watch, "default", "POST /orders")
    assert finding.duration <= finding.held <= elapsed
    assert "test_held_idle.py" in finding.before
    assert "in test_tortoise_a_transaction_across" in finding.before
    before_line = int(finding.before.rsplit(":", 1)[1].split(" ")[0])
    after_line = int(finding.call_site.rsplit(":", 1)[1].split(" ")[0])
    assert after_line == before_line + 2  # the statements either side of the call
    # The code between the two lines names the wait, in the function it calls.
    assert finding.waited_on == "a sleep, asyncio.sleep, in outbound_call"
    assert finding.suggestion.startswith(
        "Release the connection before calling outbound_call, which waits on asyncio.sleep"
    )
    assert "inside a transaction" in str(finding)
    # Not an N+1: it never fails a test, even in raise mode.
    assert not captured.nplusone


async def test_tortoise_releasing_before_the_call_is_no_finding(
    watch: PoolWatch, tortoise_pg: Any
) -> None:
    import poolwatch
    from poolwatch.testing import capture

    with capture() as captured, poolwatch.scope("POST /orders"):
        async with in_transaction() as connection:
            await connection.execute_query("SELECT 1")
        await asyncio.sleep(NAP)  # the call, with no connection in hand
        async with in_transaction() as connection:
            await connection.execute_query("SELECT 2")
    assert _held_idle(captured.findings) == []


async def test_sqlalchemy_session_idle_until_its_release_names_the_release_line(
    tmp_path: Path,
) -> None:
    from sqlalchemy import text
    from sqlalchemy.ext.asyncio import AsyncSession, create_async_engine

    import poolwatch
    from poolwatch.testing import capture

    engine = create_async_engine(f"sqlite+aiosqlite:///{tmp_path / 'held.sqlite'}")
    async with engine.begin() as connection:
        await connection.execute(text("CREATE TABLE item (id INTEGER PRIMARY KEY)"))
    watch = PoolWatch()
    watch.instrument_sqlalchemy(engine)
    try:
        with capture() as captured, poolwatch.scope("POST /checkout"):
            session = AsyncSession(engine)
            await session.execute(text("SELECT * FROM item WHERE id = 1"))
            await asyncio.sleep(NAP)  # the session keeps its connection meanwhile
            await session.close()  # the release
        recent = watch.recorder.recent.recent()
    finally:
        watch.uninstrument()
        await engine.dispose()
    (finding,) = _held_idle(captured.findings)
    assert finding.route == "POST /checkout"
    assert finding.transaction  # the session began one at its first statement
    assert "test_held_idle.py" in finding.before
    assert "test_held_idle.py" in finding.call_site  # the close() line
    assert (
        int(finding.call_site.rsplit(":", 1)[1].split(" ")[0])
        == int(finding.before.rsplit(":", 1)[1].split(" ")[0]) + 2
    )
    # /poolwatch/findings lists it (a statement a loaded machine made slow is no bug here).
    assert [f["kind"] for f in without_slow(recent)] == ["held_idle"]


def test_a_quick_read_on_another_connection_leaves_the_sessions_statements_counted(
    pg_database: str,
) -> None:
    # A session holds its connection; a helper reads on a connection of its own; the
    # session's next statement (0.3 s of pg_sleep) is time in a statement, not idle.
    from sqlalchemy import create_engine, text
    from sqlalchemy.orm import Session

    import poolwatch

    url = "postgresql+psycopg://" + pg_database.split("://", 1)[1]
    engine = create_engine(url, pool_size=2, max_overflow=0)
    _warm(engine, 2)
    watch = PoolWatch()
    watch.instrument_sqlalchemy(engine)
    try:
        with poolwatch.scope("POST /imports"), Session(engine) as session:
            session.execute(text("SELECT 1"))
            with engine.connect() as other:
                other.execute(text("SELECT 2"))
            session.execute(text("SELECT pg_sleep(:s)"), {"s": NAP})
            session.commit()
        findings = watch.recorder.recent.recent()
    finally:
        watch.uninstrument()
        engine.dispose()
    count, idle = _idle(watch, "main", "POST /imports")
    assert count == 2
    statements = _statements(watch, "main", "POST /imports")
    assert statements >= NAP  # the session's pg_sleep, timed as a statement
    # The two checkouts' idle time is their holds less every statement, the pg_sleep
    # included: had it been counted to the helper's checkout (back already) or to none,
    # the session's idle time would be its NAP or more above this, however slow the
    # machine. (Equal up to float rounding: the same seconds, summed in another order.)
    checkouts, held = _held(watch, "main")
    assert checkouts == count  # every checkout of the pool was the route's
    assert idle == pytest.approx(held - statements), idle
    assert [f for f in findings if f["kind"] == "held_idle"] == []


async def test_tortoise_work_on_the_cpu_between_two_statements_is_no_finding(
    watch: PoolWatch, tortoise_pg: Any
) -> None:
    """A gap the task spent computing (an ORM's first-use set-up, building a report in
    Python) is the connection held idle all the same, in the metric; but it is not a
    connection held across an await of something else, the finding's subject."""
    import poolwatch
    from poolwatch.testing import capture

    def compute(seconds: float) -> int:
        deadline = time.perf_counter() + seconds
        spins = 0
        while time.perf_counter() < deadline:
            spins += 1
        return spins

    with capture() as captured, poolwatch.scope("POST /reports"):
        async with in_transaction() as connection:
            await connection.execute_query("SELECT * FROM t_author WHERE id = 1")
            compute(NAP)
            await connection.execute_query("SELECT * FROM t_book WHERE id = 2")
    assert _held_idle(captured.findings) == []
    count, idle = _idle(watch, "default", "POST /reports")
    assert count == 1
    assert idle >= NAP


async def test_a_connection_held_outside_any_request_is_idle_time_but_no_finding(
    tmp_path: Path,
) -> None:
    """A test fixture's session held for a whole test, or a script's: no route to name."""
    from sqlalchemy import text
    from sqlalchemy.ext.asyncio import AsyncSession, create_async_engine

    from poolwatch.testing import capture

    engine = create_async_engine(f"sqlite+aiosqlite:///{tmp_path / 'held.sqlite'}")
    watch = PoolWatch()
    watch.instrument_sqlalchemy(engine)
    try:
        with capture() as captured:
            async with AsyncSession(engine) as session:
                await session.execute(text("SELECT 1"))
                await asyncio.sleep(NAP)
                await session.execute(text("SELECT 2"))
    finally:
        watch.uninstrument()
        await engine.dispose()
    assert _held_idle(captured.findings) == []
    count, idle = _idle(watch, "main", "none")
    assert count == 1
    assert idle >= NAP
