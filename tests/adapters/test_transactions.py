"""Transactions counted by outcome, and timed, on both ORMs.

The truth is what each block does to the database: a block that commits leaves its row,
one that rolls back (by the application's call or by an exception) leaves none. Each case
checks the row count as well as the outcome poolwatch counted, so a case whose code did
not do what its name says fails on the first assertion, not on poolwatch's.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import suppress
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Engine, create_engine, text
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, create_async_engine
from sqlalchemy.orm import Session
from tortoise import Tortoise, connections
from tortoise.backends.base.executor import EXECUTOR_CACHE
from tortoise.transactions import atomic, in_transaction

import poolwatch
from poolwatch import PoolWatch
from poolwatch.events import TRANSACTION_OUTCOMES
from tests.metrics_helpers import total, value

NAP = 0.2
ROUTE = "POST /orders"


class Boom(Exception):
    """The application's own error, raised inside a transaction's block."""


def _case_id(case: object) -> str | None:
    return getattr(case, "__name__", "").lstrip("_") or None


def outcomes(watch: PoolWatch, pool: str = "main", route: str = ROUTE) -> dict[str, float]:
    """The route's transactions by outcome, the ones at zero left out."""
    counts = {
        outcome: value(
            watch.registry,
            "poolwatch_transactions_total",
            pool=pool,
            route=route,
            outcome=outcome,
        )
        for outcome in TRANSACTION_OUTCOMES
    }
    return {outcome: count for outcome, count in counts.items() if count}


def durations(watch: PoolWatch, pool: str = "main", route: str = ROUTE) -> tuple[float, float]:
    name = "poolwatch_transaction_duration_seconds"
    labels = {"pool": pool, "route": route}
    return (
        value(watch.registry, f"{name}_count", **labels),
        value(watch.registry, f"{name}_sum", **labels),
    )


# -- SQLAlchemy, sync ------------------------------------------------------------------


def _sa_commit(engine: Engine) -> None:
    with engine.begin() as conn:
        conn.execute(text("INSERT INTO items (n) VALUES (1)"))


def _sa_rollback(engine: Engine) -> None:
    with engine.connect() as conn:
        conn.execute(text("INSERT INTO items (n) VALUES (1)"))
        conn.rollback()


def _sa_exception(engine: Engine) -> None:
    with suppress(Boom), engine.begin() as conn:
        conn.execute(text("INSERT INTO items (n) VALUES (1)"))
        raise Boom


def _sa_session_commit(engine: Engine) -> None:
    with Session(engine) as session:
        session.execute(text("INSERT INTO items (n) VALUES (1)"))
        session.commit()


def _sa_session_rollback(engine: Engine) -> None:
    with Session(engine) as session:
        session.execute(text("INSERT INTO items (n) VALUES (1)"))
        session.rollback()


def _sa_session_exception(engine: Engine) -> None:
    with suppress(Boom), Session(engine) as session, session.begin():
        session.execute(text("INSERT INTO items (n) VALUES (1)"))
        raise Boom


def _sa_session_reads(engine: Engine) -> None:
    with Session(engine) as session:  # reads, then close: no commit, nothing to undo
        session.execute(text("SELECT count(*) FROM items")).scalar()


def _sa_nested_savepoint(engine: Engine) -> None:
    with engine.begin() as conn:
        conn.execute(text("INSERT INTO items (n) VALUES (1)"))
        with suppress(Boom), conn.begin_nested():
            conn.execute(text("INSERT INTO items (n) VALUES (2)"))
            raise Boom  # the savepoint rolls back; the outer transaction commits


def _sa_session_savepoints(engine: Engine) -> None:
    with Session(engine) as session:
        session.execute(text("INSERT INTO items (n) VALUES (1)"))
        savepoint = session.begin_nested()
        session.execute(text("INSERT INTO items (n) VALUES (2)"))
        savepoint.rollback()
        with session.begin_nested():
            session.execute(text("INSERT INTO items (n) VALUES (3)"))
        session.commit()


SYNC_CASES: list[tuple[Callable[[Engine], None], dict[str, float], int]] = [
    (_sa_commit, {"commit": 1}, 1),
    (_sa_rollback, {"rollback": 1}, 0),
    (_sa_exception, {"error": 1}, 0),
    (_sa_session_commit, {"commit": 1}, 1),
    (_sa_session_rollback, {"rollback": 1}, 0),
    (_sa_session_exception, {"error": 1}, 0),
    (_sa_session_reads, {"closed": 1}, 0),
    (_sa_nested_savepoint, {"commit": 1}, 1),
    (_sa_session_savepoints, {"commit": 1}, 2),
]


@pytest.fixture(params=["sqlite", "postgresql"])
def sync_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'tx.sqlite'}"
    database: str = request.getfixturevalue("pg_database")
    return "postgresql+psycopg://" + database.split("://", 1)[1]


@pytest.fixture
def sync_engine(sync_url: str) -> Iterator[Engine]:
    engine = create_engine(sync_url)
    with engine.begin() as conn:
        conn.execute(text("CREATE TABLE items (n INTEGER)"))
    yield engine
    engine.dispose()


@pytest.mark.parametrize(("case", "expected", "rows"), SYNC_CASES, ids=_case_id)
def test_sqlalchemy_sync_transactions_by_outcome(
    make_watch: Callable[..., PoolWatch],
    sync_engine: Engine,
    case: Callable[[Engine], None],
    expected: dict[str, float],
    rows: int,
) -> None:
    watch = make_watch()
    watch.instrument_sqlalchemy(sync_engine)
    with poolwatch.scope(ROUTE):
        case(sync_engine)
    with sync_engine.connect() as conn:
        assert conn.execute(text("SELECT count(*) FROM items")).scalar() == rows
    assert outcomes(watch) == expected
    assert durations(watch)[0] == sum(expected.values())


def test_sqlalchemy_a_failing_commit_is_an_error(
    make_watch: Callable[..., PoolWatch], pg_database: str
) -> None:
    from sqlalchemy.exc import IntegrityError

    engine = create_engine("postgresql+psycopg://" + pg_database.split("://", 1)[1])
    with engine.begin() as conn:
        conn.execute(text("CREATE TABLE once (n INTEGER UNIQUE DEFERRABLE INITIALLY DEFERRED)"))
    watch = make_watch()
    watch.instrument_sqlalchemy(engine)
    try:
        with poolwatch.scope(ROUTE), pytest.raises(IntegrityError), engine.begin() as conn:
            conn.execute(text("INSERT INTO once VALUES (1), (1)"))  # checked at COMMIT
    finally:
        engine.dispose()
    assert outcomes(watch) == {"error": 1}


def test_sqlalchemy_a_connection_lost_mid_transaction_is_an_error(
    make_watch: Callable[..., PoolWatch], pg_database: str
) -> None:
    from sqlalchemy.exc import OperationalError

    engine = create_engine("postgresql+psycopg://" + pg_database.split("://", 1)[1])
    watch = make_watch()
    watch.instrument_sqlalchemy(engine)
    try:
        with poolwatch.scope(ROUTE), pytest.raises(OperationalError), engine.begin() as conn:
            # The server ends the session: the driver reports a disconnect, SQLAlchemy
            # invalidates the connection and has nothing left to roll back on.
            conn.execute(text("SELECT pg_terminate_backend(pg_backend_pid())"))
        with poolwatch.scope("GET /after"), engine.begin() as conn:
            conn.execute(text("SELECT 1"))
    finally:
        engine.dispose()
    assert outcomes(watch) == {"error": 1}
    assert outcomes(watch, route="GET /after") == {"commit": 1}
    assert total(watch.registry, "poolwatch_internal_errors_total") == 0


def test_sqlalchemy_duration_spans_the_transaction_not_the_checkout(
    make_watch: Callable[..., PoolWatch], tmp_path: Path
) -> None:
    engine = create_engine(f"sqlite:///{tmp_path / 'tx.sqlite'}")
    watch = make_watch()
    watch.instrument_sqlalchemy(engine)
    try:
        with poolwatch.scope(ROUTE), engine.connect() as conn:
            started = time.perf_counter()
            with conn.begin():
                conn.execute(text("SELECT 1"))
                time.sleep(NAP)  # inside the transaction
            transaction = time.perf_counter() - started  # its BEGIN and its end inside
            time.sleep(NAP)  # after it, the connection still in hand
    finally:
        engine.dispose()
    count, seconds = durations(watch)
    assert count == 1
    # Timed as the checkout, it would span this block and the second nap after it: longer
    # than the block alone, however slow the machine.
    assert NAP <= seconds <= transaction


def test_a_pool_reset_or_a_first_connect_rollback_is_no_transaction(
    make_watch: Callable[..., PoolWatch], tmp_path: Path
) -> None:
    engine = create_engine(f"sqlite:///{tmp_path / 'tx.sqlite'}")
    watch = make_watch()
    watch.instrument_sqlalchemy(engine)
    try:
        raw = engine.raw_connection()  # DBAPI use: SQLAlchemy opens no transaction
        raw.cursor().execute("SELECT 1")
        raw.close()  # the pool's reset-on-return rolls back
    finally:
        engine.dispose()
    assert total(watch.registry, "poolwatch_transactions_total") == 0
    assert total(watch.registry, "poolwatch_internal_errors_total") == 0


# -- SQLAlchemy, async -----------------------------------------------------------------


async def _async_commit(engine: AsyncEngine) -> None:
    async with engine.begin() as conn:
        await conn.execute(text("INSERT INTO items (n) VALUES (1)"))


async def _async_rollback(engine: AsyncEngine) -> None:
    async with AsyncSession(engine) as session:
        await session.execute(text("INSERT INTO items (n) VALUES (1)"))
        await session.rollback()


async def _async_exception(engine: AsyncEngine) -> None:
    # The rollback runs in a greenlet of its own, where sys.exc_info() is empty.
    with suppress(Boom):
        async with AsyncSession(engine) as session, session.begin():
            await session.execute(text("INSERT INTO items (n) VALUES (1)"))
            raise Boom


async def _async_reads(engine: AsyncEngine) -> None:
    async with AsyncSession(engine) as session:
        await session.execute(text("SELECT count(*) FROM items"))


async def _async_nested(engine: AsyncEngine) -> None:
    async with AsyncSession(engine) as session, session.begin():
        await session.execute(text("INSERT INTO items (n) VALUES (1)"))
        with suppress(Boom):
            async with session.begin_nested():
                await session.execute(text("INSERT INTO items (n) VALUES (2)"))
                raise Boom


ASYNC_CASES: list[tuple[Callable[[AsyncEngine], Awaitable[None]], dict[str, float], int]] = [
    (_async_commit, {"commit": 1}, 1),
    (_async_rollback, {"rollback": 1}, 0),
    (_async_exception, {"error": 1}, 0),
    (_async_reads, {"closed": 1}, 0),
    (_async_nested, {"commit": 1}, 1),
]


@pytest.fixture(params=["aiosqlite", "asyncpg"])
async def async_engine(
    request: pytest.FixtureRequest, tmp_path: Path
) -> AsyncIterator[AsyncEngine]:
    if request.param == "aiosqlite":
        url = f"sqlite+aiosqlite:///{tmp_path / 'tx.sqlite'}"
    else:
        database: str = request.getfixturevalue("pg_database")
        url = "postgresql+asyncpg://" + database.split("://", 1)[1]
    engine = create_async_engine(url)
    async with engine.begin() as conn:
        await conn.execute(text("CREATE TABLE items (n INTEGER)"))
    yield engine
    await engine.dispose()


@pytest.mark.parametrize(("case", "expected", "rows"), ASYNC_CASES, ids=_case_id)
async def test_sqlalchemy_async_transactions_by_outcome(
    make_watch: Callable[..., PoolWatch],
    async_engine: AsyncEngine,
    case: Callable[[AsyncEngine], Awaitable[None]],
    expected: dict[str, float],
    rows: int,
) -> None:
    watch = make_watch()
    watch.instrument_sqlalchemy(async_engine)
    with poolwatch.scope(ROUTE):
        await case(async_engine)
    async with async_engine.connect() as conn:
        assert (await conn.execute(text("SELECT count(*) FROM items"))).scalar() == rows
    assert outcomes(watch) == expected


# -- Tortoise --------------------------------------------------------------------------


async def _tortoise_commit() -> None:
    async with in_transaction() as conn:
        await conn.execute_query("INSERT INTO t_author (name) VALUES ('a')")


async def _tortoise_rollback() -> None:
    async with in_transaction() as conn:
        await conn.execute_query("INSERT INTO t_author (name) VALUES ('a')")
        await conn.rollback()


async def _tortoise_exception() -> None:
    with suppress(Boom):
        async with in_transaction() as conn:
            await conn.execute_query("INSERT INTO t_author (name) VALUES ('a')")
            raise Boom


async def _tortoise_atomic() -> None:
    @atomic()
    async def create() -> None:
        await connections.get("default").execute_query("INSERT INTO t_author (name) VALUES ('a')")

    await create()


async def _tortoise_nested() -> None:
    async with in_transaction() as conn:
        await conn.execute_query("INSERT INTO t_author (name) VALUES ('a')")
        async with in_transaction():  # a savepoint (to 0.2x: the same transaction)
            await conn.execute_query("INSERT INTO t_author (name) VALUES ('b')")


async def _tortoise_nested_exception() -> None:
    with suppress(Boom):
        async with in_transaction() as conn:
            await conn.execute_query("INSERT INTO t_author (name) VALUES ('a')")
            async with in_transaction():
                await conn.execute_query("INSERT INTO t_author (name) VALUES ('b')")
                raise Boom


async def _tortoise_across_a_sleep() -> None:
    async with in_transaction() as conn:
        await conn.execute_query("INSERT INTO t_author (name) VALUES ('a')")
        await asyncio.sleep(NAP)


TORTOISE_CASES: list[tuple[Callable[[], Awaitable[None]], dict[str, float], int]] = [
    (_tortoise_commit, {"commit": 1}, 1),
    (_tortoise_rollback, {"rollback": 1}, 0),
    (_tortoise_exception, {"error": 1}, 0),
    (_tortoise_atomic, {"commit": 1}, 1),
    (_tortoise_nested, {"commit": 1}, 2),
    (_tortoise_nested_exception, {"error": 1}, 0),
    (_tortoise_across_a_sleep, {"commit": 1}, 1),
]


@pytest.fixture(params=["sqlite", "asyncpg"])
async def tortoise_db(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Any]:
    EXECUTOR_CACHE.clear()
    if request.param == "sqlite":
        url = f"sqlite://{tmp_path / 'tx.sqlite'}"
    else:
        database: str = request.getfixturevalue("pg_database")
        url = "asyncpg://" + database.split("://", 1)[1] + "?maxsize=4"
    await Tortoise.init(db_url=url, modules={"models": ["tests.tortoise_models"]})
    await Tortoise.generate_schemas()
    try:
        yield connections.get("default")
    finally:
        await Tortoise.close_connections()


@pytest.mark.parametrize(("case", "expected", "rows"), TORTOISE_CASES, ids=_case_id)
async def test_tortoise_transactions_by_outcome(
    watch: PoolWatch,
    tortoise_db: Any,
    case: Callable[[], Awaitable[None]],
    expected: dict[str, float],
    rows: int,
) -> None:
    with poolwatch.scope(ROUTE):
        started = time.perf_counter()
        await case()
        elapsed = time.perf_counter() - started  # the transaction lies inside
    _, found = await tortoise_db.execute_query("SELECT count(*) AS n FROM t_author")
    assert dict(found[0])["n"] == rows
    assert outcomes(watch, pool="default") == expected
    count, seconds = durations(watch, pool="default")
    assert count == 1
    assert seconds <= elapsed
    if case is _tortoise_across_a_sleep:
        assert seconds >= NAP


async def test_tortoise_a_nested_block_that_fails_inside_a_caught_exception(
    watch: PoolWatch, tortoise_db: Any
) -> None:
    """A Tortoise with savepoints rolls the nested block back to its savepoint and the
    outer block commits; one without (0.21) rolls the whole transaction back at the nested
    block's exit, and the outer block's clean exit then has nothing to commit. Either way
    the count says what the database did."""
    from tortoise.backends.base import client as base

    transactional = getattr(base, "TransactionalDBClient", None)
    savepoints = hasattr(transactional, "savepoint_rollback")

    with poolwatch.scope(ROUTE):
        async with in_transaction() as conn:
            await conn.execute_query("INSERT INTO t_author (name) VALUES ('a')")
            try:
                async with in_transaction():
                    await conn.execute_query("INSERT INTO t_author (name) VALUES ('b')")
                    raise Boom
            except Boom:
                pass
    _, found = await tortoise_db.execute_query("SELECT count(*) AS n FROM t_author")
    rows = dict(found[0])["n"]
    if savepoints:
        assert (rows, outcomes(watch, pool="default")) == (1, {"commit": 1})
    else:
        assert (rows, outcomes(watch, pool="default")) == (0, {"rollback": 1})
