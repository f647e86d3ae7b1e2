"""Async engines: tasks sharing the pool, cancellations, timeouts; an asyncpg statement
cancelled mid-flight."""

from __future__ import annotations

import asyncio
import random
from collections.abc import Awaitable, Callable
from typing import Any

import pytest
import sqlalchemy.exc
from sqlalchemy import Table, event, select, text, update
from sqlalchemy.ext.asyncio import AsyncEngine, async_sessionmaker, create_async_engine
from sqlalchemy.pool import QueuePool

import poolwatch
from poolwatch import PoolWatch
from tests.adapters.sqlalchemy.readings import (
    POOL,
    SEED_ROWS,
    assert_at_rest,
    count_connects,
    creations,
    errors,
    pending,
    pg_url,
    queries,
    sample,
    timeouts,
    used,
    wait_until,
    waits,
)
from tests.pool_truth import settled

# -- async engines -----------------------------------------------------------------------


async def test_fifty_tasks_share_the_pool_and_see_the_callers_scope(
    watch: PoolWatch, make_async_engine: Callable[..., Awaitable[AsyncEngine]], table: Table
) -> None:
    tasks, bad_every = 50, 5
    engine = await make_async_engine(pool_size=5, max_overflow=0, pool_timeout=30)
    opened = count_connects(engine)
    watch.instrument_sqlalchemy(engine, pool=POOL)

    async def work(n: int) -> None:
        async with engine.connect() as conn:
            row_id = n % SEED_ROWS + 1
            (await conn.execute(select(table).where(table.c.id == row_id))).all()
            if n % bad_every == 0:
                with pytest.raises(sqlalchemy.exc.DBAPIError):
                    await conn.execute(text(f"SELECT nope FROM {table.name}"))

    # Queries run in SQLAlchemy's greenlet, which must share the task's context.
    with poolwatch.scope("async"):
        await asyncio.gather(*(work(n) for n in range(tasks)))

    failures = tasks // bad_every
    assert queries(watch, "SELECT", "async") == tasks + failures
    assert errors(watch, "SELECT", "async") == failures
    assert queries(watch, "SELECT", "none") == 0
    assert waits(watch) == tasks
    assert creations(watch) == opened[0] <= 5
    assert timeouts(watch) == 0
    assert_at_rest(watch, engine.sync_engine.pool)


async def test_cancelling_tasks_that_wait_for_a_connection(
    watch: PoolWatch, make_async_engine: Callable[..., Awaitable[AsyncEngine]], table: Table
) -> None:
    engine = await make_async_engine(pool_size=1, max_overflow=0, pool_timeout=30)
    opened = count_connects(engine)
    watch.instrument_sqlalchemy(engine, pool=POOL)

    async def wait_for_connection() -> None:
        async with engine.connect() as conn:
            await conn.execute(select(table))

    async with engine.connect() as held:
        await held.execute(select(table).where(table.c.id == 1))
        waiters = [asyncio.create_task(wait_for_connection()) for _ in range(5)]
        await wait_until(lambda: pending(watch) == 5)
        for task in waiters:
            task.cancel()
        results = await asyncio.gather(*waiters, return_exceptions=True)
        assert all(isinstance(r, asyncio.CancelledError) for r in results)
        assert pending(watch) == 0
        assert used(watch) == 1

    assert timeouts(watch) == 0
    assert waits(watch) == 1
    assert_at_rest(watch, engine.sync_engine.pool)
    async with engine.connect() as conn:  # the pool still works
        await conn.execute(select(table).where(table.c.id == 2))
    assert waits(watch) == 2
    assert creations(watch) == opened[0] == 1
    assert queries(watch, "SELECT", "none") == 2
    assert_at_rest(watch, engine.sync_engine.pool)


async def test_async_acquire_timeouts(
    watch: PoolWatch, make_async_engine: Callable[..., Awaitable[AsyncEngine]]
) -> None:
    engine = await make_async_engine(pool_size=1, max_overflow=0, pool_timeout=0.05)
    watch.instrument_sqlalchemy(engine, pool=POOL)
    async with engine.connect():
        for _ in range(2):
            with pytest.raises(sqlalchemy.exc.TimeoutError):
                await engine.connect().start()
        assert (pending(watch), used(watch)) == (0, 1)
    assert timeouts(watch) == 2
    assert waits(watch) == 1 + 2
    assert_at_rest(watch, engine.sync_engine.pool)


async def test_successes_errors_timeouts_and_cancellations_together(
    watch: PoolWatch, make_async_engine: Callable[..., Awaitable[AsyncEngine]], table: Table
) -> None:
    engine = await make_async_engine(pool_size=2, max_overflow=0, pool_timeout=0.2)
    watch.instrument_sqlalchemy(engine, pool=POOL)
    outcomes: dict[str, int] = {"ok": 0, "error": 0, "timeout": 0}

    async def work(n: int) -> None:
        try:
            async with engine.connect() as conn:
                await conn.execute(select(table).where(table.c.id == n % SEED_ROWS + 1))
                if n % 3 == 0:
                    await conn.execute(text(f"SELECT nope FROM {table.name}"))
                await asyncio.sleep(0.01 * (n % 4))
        except sqlalchemy.exc.TimeoutError:
            outcomes["timeout"] += 1
        except sqlalchemy.exc.DBAPIError:
            outcomes["error"] += 1
        else:
            outcomes["ok"] += 1

    tasks = [asyncio.create_task(work(n)) for n in range(40)]
    await asyncio.sleep(0.03)
    for task in tasks[::7]:
        task.cancel()
    results = await asyncio.gather(*tasks, return_exceptions=True)
    cancelled = sum(isinstance(r, asyncio.CancelledError) for r in results)

    assert cancelled + sum(outcomes.values()) == 40
    # A task cancelled as its wait for a connection ran out: its acquire timed out (the
    # pool counts it, and so does poolwatch), yet the task ends cancelled. Which of the two
    # comes first depends on the machine's timing; the count is exact up to those tasks.
    assert outcomes["timeout"] <= timeouts(watch) <= outcomes["timeout"] + cancelled
    # Likewise a task cancelled as its failed statement's error unwound it (the cancel
    # landing in the connection's rollback): the statement failed, and is counted so.
    assert outcomes["error"] <= errors(watch, "SELECT", "none") <= outcomes["error"] + cancelled
    assert_at_rest(watch, engine.sync_engine.pool)


async def test_sessions_cancelled_mid_transaction_lose_no_connection_with_or_without_poolwatch(
    watch: PoolWatch,
    make_async_engine: Callable[..., Awaitable[AsyncEngine]],
    table: Table,
    async_url: str,
) -> None:
    # The stack matrix's app: a session per request, a write transaction in it (on
    # SQLite, BEGIN IMMEDIATE as SQLAlchemy recommends for concurrent writers), and
    # requests abandoned at random points, mid-statement or mid-transaction.
    async def serve(engine: AsyncEngine) -> dict[str, int]:
        if engine.dialect.name == "sqlite":
            _begin_immediate(engine)
        # One connection first, alone: SQLAlchemy 2.0.0 runs a new pool's first connect
        # handlers under a thread lock, and a second task connecting meanwhile would block
        # the loop on it.
        async with engine.begin() as conn:
            await conn.execute(update(table).where(table.c.id == 1).values(name="before"))
        sessions = async_sessionmaker(engine)
        rng = random.Random(7)

        async def request(n: int) -> None:
            row = table.c.id == n % SEED_ROWS + 1
            async with sessions() as session, session.begin():
                await session.execute(update(table).where(row).values(name=f"order-{n}"))
                await asyncio.sleep(0.002 * (n % 3))
                (await session.execute(select(table).where(row))).all()

        tasks = [asyncio.create_task(request(n)) for n in range(80)]
        loop = asyncio.get_running_loop()
        for task in tasks:
            if rng.random() < 0.4:
                loop.call_later(rng.uniform(0, 0.05), task.cancel)
        results = await asyncio.gather(*tasks, return_exceptions=True)
        outcomes = {"ok": 0, "cancelled": 0, "error": 0}
        for result in results:
            cancelled = isinstance(result, asyncio.CancelledError)
            outcomes["ok" if result is None else "cancelled" if cancelled else "error"] += 1
        # Nothing lost: the pool has every connection back (once the cleanups that
        # outlive a cancelled task are over), and still serves writes.
        pool = engine.sync_engine.pool
        assert isinstance(pool, QueuePool)
        outcomes["lost"] = await settled(pool, 10)
        async with engine.begin() as conn:
            await conn.execute(update(table).where(table.c.id == 1).values(name="after"))
        return outcomes

    options: dict[str, Any] = {"pool_size": 4, "max_overflow": 0, "pool_timeout": 30}
    if async_url.startswith("sqlite"):  # a writer waits for the lock, as the matrix's app
        options["connect_args"] = {"timeout": 30}
    without = await serve(await make_async_engine(**options))
    engine = await make_async_engine(**options)
    watch.instrument_sqlalchemy(engine, pool=POOL)
    with_poolwatch = await serve(engine)

    for run, outcomes in (("without poolwatch", without), ("with poolwatch", with_poolwatch)):
        assert outcomes["cancelled"] > 0, (run, outcomes)
        assert outcomes["ok"] > 0, (run, outcomes)
        assert (outcomes["error"], outcomes["lost"]) == (0, 0), (run, outcomes)
    assert_at_rest(watch, engine.sync_engine.pool)


def _begin_immediate(engine: AsyncEngine) -> None:
    """Every transaction takes SQLite's write lock at BEGIN (SQLAlchemy's recipe)."""

    @event.listens_for(engine.sync_engine, "connect")
    def driver_leaves_transactions_to_us(dbapi_connection: Any, record: Any) -> None:
        dbapi_connection.isolation_level = None

    @event.listens_for(engine.sync_engine, "begin")
    def begin_immediate(connection: Any) -> None:
        connection.exec_driver_sql("BEGIN IMMEDIATE")


# -- PostgreSQL only ---------------------------------------------------------------------


@pytest.mark.postgres
async def test_asyncpg_statement_cancelled_mid_flight(watch: PoolWatch, pg_dsn: str) -> None:
    engine = create_async_engine(pg_url(pg_dsn, "asyncpg"), pool_size=2, max_overflow=0)
    try:
        async with engine.connect() as conn:  # the dialect's first-connect statements
            await conn.execute(text("SELECT 1"))
        watch.instrument_sqlalchemy(engine, pool=POOL)

        async def sleep_in_database() -> None:
            async with engine.connect() as conn:
                await conn.execute(text("SELECT pg_sleep(5)"))

        task = asyncio.create_task(sleep_in_database())
        await wait_until(lambda: used(watch) == 1)
        await asyncio.sleep(0.2)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert queries(watch, "SELECT", "none") == 1
        assert errors(watch, "SELECT", "none") == 0  # cancelled, not a database error
        duration = sample(
            watch, "db_client_operation_duration_seconds_sum", operation="SELECT", route="none"
        )
        assert duration >= 0.15  # cancelled 0.2 s after the checkout
        assert_at_rest(watch, engine.sync_engine.pool)
    finally:
        await engine.dispose()
