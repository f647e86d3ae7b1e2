"""The engines the SQLAlchemy adapter's tests run on: SQLite (pysqlite, aiosqlite) and
PostgreSQL, each with a seeded table, disposed after the test."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import (
    Column,
    Engine,
    Integer,
    MetaData,
    String,
    Table,
    create_engine,
    insert,
    select,
)
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine
from sqlalchemy.pool import AsyncAdaptedQueuePool, NullPool
from sqlalchemy.util import greenlet_spawn

from poolwatch import PoolWatch
from tests.adapters.sqlalchemy.readings import SEED_ROWS, pg_url

# -- databases ---------------------------------------------------------------------------


@pytest.fixture
def table() -> Table:
    """A table of its own for each test, so PostgreSQL tests can share a database."""
    return Table(
        f"pw_items_{uuid.uuid4().hex[:10]}",
        MetaData(),
        Column("id", Integer, primary_key=True),
        Column("name", String(64)),
    )


@pytest.fixture
def watch() -> Iterator[PoolWatch]:
    instance = PoolWatch()
    yield instance
    instance.uninstrument()


@pytest.fixture(params=["sqlite", pytest.param("psycopg", marks=pytest.mark.postgres)])
def sync_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'sync.db'}"
    return pg_url(request.getfixturevalue("pg_dsn"), "psycopg")


@pytest.fixture(params=["aiosqlite", pytest.param("asyncpg", marks=pytest.mark.postgres)])
def async_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "aiosqlite":
        return f"sqlite+aiosqlite:///{tmp_path / 'async.db'}"
    return pg_url(request.getfixturevalue("pg_dsn"), "asyncpg")


@pytest.fixture
def make_engine(sync_url: str, table: Table) -> Iterator[Callable[..., Engine]]:
    """``make_engine(**create_engine_kwargs)``: seeded ``table``, empty pool, warmed dialect.

    The dialect's first connection runs its own set-up statements; they happen here,
    before instrumenting, so tests count only their own statements.
    """
    engines: list[Engine] = []

    def make(**kwargs: Any) -> Engine:
        engine = create_engine(sync_url, **kwargs)
        engines.append(engine)
        with engine.begin() as conn:
            table.create(conn, checkfirst=True)
            if conn.execute(select(table.c.id).limit(1)).first() is None:
                rows = [{"id": i, "name": f"row-{i}"} for i in range(1, SEED_ROWS + 1)]
                conn.execute(insert(table), rows)
        engine.dispose()
        return engine

    yield make
    for engine in engines:
        engine.dispose()
    cleanup = create_engine(sync_url, poolclass=NullPool)
    with cleanup.begin() as conn:
        table.drop(conn, checkfirst=True)
    cleanup.dispose()


@pytest.fixture
async def make_async_engine(
    async_url: str, table: Table
) -> AsyncIterator[Callable[..., Awaitable[AsyncEngine]]]:
    """The asyncio twin of :func:`make_engine`."""
    engines: list[AsyncEngine] = []

    async def make(**kwargs: Any) -> AsyncEngine:
        if "pool_size" in kwargs:  # SQLAlchemy 2.0 gives aiosqlite a NullPool by default
            kwargs.setdefault("poolclass", AsyncAdaptedQueuePool)
        engine = create_async_engine(async_url, **kwargs)
        engines.append(engine)
        async with engine.begin() as conn:
            await conn.run_sync(lambda sync: table.create(sync, checkfirst=True))
            if (await conn.execute(select(table.c.id).limit(1))).first() is None:
                rows = [{"id": i, "name": f"row-{i}"} for i in range(1, SEED_ROWS + 1)]
                await conn.execute(insert(table), rows)
        # Closes the pool's connections but keeps the pool: AsyncEngine.dispose() makes a
        # new one, whose first connections deadlock each other on SQLAlchemy before 2.0.25
        # when they open at once (sqlalchemy#10813, with or without poolwatch).
        await greenlet_spawn(engine.sync_engine.pool.dispose)
        return engine

    yield make
    for engine in engines:
        await engine.dispose()
    if async_url.startswith("sqlite"):
        # The file goes with the test's tmp_path. A connection SQLAlchemy invalidated as
        # its task was cancelled is closed only when aiosqlite's thread gets to it, and
        # until then its read lock would fail a DROP here ("database is locked").
        return
    cleanup = create_async_engine(async_url, poolclass=NullPool)
    async with cleanup.begin() as conn:
        await conn.run_sync(lambda sync: table.drop(sync, checkfirst=True))
    await cleanup.dispose()
