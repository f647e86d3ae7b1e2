"""The time a checked-out connection ran no statement, on both ORMs: held across an
``await`` of something else, a ``time.sleep`` in a worker thread, or not at all.

The truth is the test's own sleeps: a connection held across a 0.3 s sleep was idle for
at least 0.3 s, and for not much longer than the statements around it leave.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from tortoise import Tortoise, connections
from tortoise.backends.base.executor import EXECUTOR_CACHE
from tortoise.transactions import in_transaction

from poolwatch import PoolWatch
from tests.metrics_helpers import value

NAP = 0.3
SLACK = 0.25  # statements, scheduling and a loaded machine, on top of the nap


def _idle(watch: PoolWatch, pool: str, route: str) -> tuple[float, float]:
    """(count, sum) of the idle-while-held histogram."""
    name = "poolwatch_connection_idle_seconds"
    labels = {"pool": pool, "route": route}
    return (
        value(watch.registry, f"{name}_count", **labels),
        value(watch.registry, f"{name}_sum", **labels),
    )


@pytest.fixture
async def tortoise_pg(pg_database: str) -> AsyncIterator[Any]:
    EXECUTOR_CACHE.clear()
    url = "asyncpg://" + pg_database.split("://", 1)[1] + "?maxsize=4"
    await Tortoise.init(db_url=url, modules={"models": ["tests.tortoise_models"]})
    try:
        yield connections.get("default")
    finally:
        await Tortoise.close_connections()


async def test_tortoise_a_transaction_held_across_a_sleep_is_idle_for_the_sleep(
    watch: PoolWatch, tortoise_pg: Any
) -> None:
    import poolwatch

    with poolwatch.scope("POST /orders"):
        async with in_transaction() as connection:
            await connection.execute_query("SELECT 1")
            await asyncio.sleep(NAP)  # an outbound call, with the transaction open
            await connection.execute_query("SELECT 2")
    count, idle = _idle(watch, "default", "POST /orders")
    assert count == 1
    assert NAP <= idle < NAP + SLACK


async def test_tortoise_statements_that_take_their_own_connection_are_never_idle(
    watch: PoolWatch, tortoise_pg: Any
) -> None:
    import poolwatch

    with poolwatch.scope("GET /orders"):
        for _ in range(5):
            await tortoise_pg.execute_query("SELECT pg_sleep(0.05)")
    count, idle = _idle(watch, "default", "GET /orders")
    assert count == 5
    # Each checkout is its statement: whatever is left is the release's own few lines.
    assert idle < 0.02, idle


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
            async with AsyncSession(engine) as session:
                await session.execute(text("SELECT 1"))
                await asyncio.sleep(NAP)  # each statement runs in a greenlet of its own
                await session.execute(text("SELECT 2"))
                await session.commit()
        with poolwatch.scope("GET /fast"):
            async with AsyncSession(engine) as session:
                await session.execute(text("SELECT 1"))
    finally:
        watch.uninstrument()
        await engine.dispose()
    count, idle = _idle(watch, "main", "POST /checkout")
    assert count == 1
    assert NAP <= idle < NAP + SLACK
    count, idle = _idle(watch, "main", "GET /fast")
    assert count == 1
    assert idle < SLACK


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
            assert (await client.post("/reports")).status_code == 200
    finally:
        watch.uninstrument()
        engine.dispose()
    count, idle = _idle(watch, "main", "/reports")
    assert count == 1
    assert NAP <= idle < NAP + SLACK
