"""The Tortoise-ORM adapter against real SQLite and PostgreSQL (asyncpg and psycopg).

Every test compares poolwatch's numbers with the truth: the number of statements the test
itself issued, and what the driver's pool reports about itself.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import Any

import pytest
from prometheus_client import generate_latest
from tortoise import Tortoise, connections
from tortoise.backends.base.client import (
    ConnectionWrapper,
    PoolConnectionWrapper,
    TransactionContextPooled,
)
from tortoise.backends.base.executor import EXECUTOR_CACHE
from tortoise.exceptions import OperationalError
from tortoise.transactions import in_transaction

import poolwatch
from poolwatch import PoolWatch, PoolWatchError
from poolwatch.adapters.tortoise import read_pool_state
from tests.metrics_helpers import pool_gauges, total, value
from tests.tortoise_models import IGNORE_OLD_PSYCOPG_CLIENT, Author, Book

pytestmark = IGNORE_OLD_PSYCOPG_CLIENT

SECRET = "s3cr3t-param-value-7731"
OPS = "db_client_operation_duration_seconds_count"


@contextlib.asynccontextmanager
async def tortoise_on(url: str) -> AsyncIterator[None]:
    # Tortoise caches each model's SQL per connection name, across re-inits: switching
    # from SQLite to PostgreSQL under the same name would reuse '?' placeholders.
    EXECUTOR_CACHE.clear()
    await Tortoise.init(db_url=url, modules={"models": ["tests.tortoise_models"]})
    try:
        await Tortoise.generate_schemas()
        yield
    finally:
        await Tortoise.close_connections()


def _tortoise_url(dsn: str, scheme: str, **params: Any) -> str:
    query = "&".join(f"{k}={v}" for k, v in params.items())
    return scheme + "://" + dsn.split("://", 1)[1] + (f"?{query}" if query else "")


async def _seed(n: int = 5) -> None:
    await Author.bulk_create([Author(name=f"a{i}") for i in range(n)])
    for author in await Author.all():
        await Book.create(title=f"b{author.id}", author=author)


# -- SQLite --------------------------------------------------------------------------------


async def test_each_statement_counted_once_with_route(watch: PoolWatch) -> None:
    async with tortoise_on("sqlite://:memory:"):
        before = total(watch.registry, OPS)
        with poolwatch.scope("job"):
            await Author.create(name=SECRET)  # execute_insert
            await Author.filter(name=SECRET).first()  # execute_query
            await Author.all().values("name")  # execute_query_dict -> ..._with_affected
            await Author.bulk_create([Author(name="x"), Author(name="y")])  # execute_many
            conn = connections.get("default")
            await conn.execute_query_dict("SELECT COUNT(*) AS n FROM t_author")
        assert total(watch.registry, OPS) - before == 5
        assert value(watch.registry, OPS, pool="default", operation="INSERT", route="job") == 2
        assert value(watch.registry, OPS, pool="default", operation="SELECT", route="job") == 3
        # One scope block, five statements.
        assert value(watch.registry, "poolwatch_request_queries_sum", route="job") == 5
        assert value(watch.registry, "poolwatch_request_queries_count", route="job") == 1
        assert SECRET not in generate_latest(watch.registry).decode()


async def test_transactions_and_gather_are_attributed(watch: PoolWatch) -> None:
    async with tortoise_on("sqlite://:memory:"):
        await _seed()
        with poolwatch.scope("report"):
            async with in_transaction():
                await Author.all()
                async with in_transaction():  # savepoint, same connection
                    await Book.all()
            await asyncio.gather(*(Author.get(id=i) for i in range(1, 6)))
        assert total(watch.registry, OPS, route="report") == 7
        used, idle, pending = pool_gauges(watch.registry, "default")
        assert (used, idle, pending) == (0, 1, 0)


async def test_database_errors_pass_through_and_are_counted(watch: PoolWatch) -> None:
    async with tortoise_on("sqlite://:memory:"):
        conn = connections.get("default")
        with poolwatch.scope("bad"), pytest.raises(OperationalError, match="no such table"):
            await conn.execute_query("SELECT * FROM missing_table WHERE x = ?", [SECRET])
        assert (
            value(
                watch.registry,
                "db_client_operation_errors_total",
                pool="default",
                operation="SELECT",
                route="bad",
            )
            == 1
        )
        assert value(watch.registry, "poolwatch_internal_errors_total", component="query") == 0
        assert pool_gauges(watch.registry, "default") == (0, 1, 0)


async def test_sqlite_lock_wait_and_cancellation_while_waiting(watch: PoolWatch) -> None:
    async with tortoise_on("sqlite://:memory:"):
        await _seed()
        holding = asyncio.Event()
        release = asyncio.Event()

        async def hold() -> None:
            async with in_transaction():
                await Author.all()
                holding.set()
                await release.wait()

        holder = asyncio.create_task(hold())
        await holding.wait()

        async def read() -> list[Author]:
            return await Author.all()

        waiters = [asyncio.create_task(read()) for _ in range(4)]
        await asyncio.sleep(0.05)
        used, _, pending = pool_gauges(watch.registry, "default")
        assert (used, pending) == (1, 4)
        waiters[0].cancel()
        waiters[1].cancel()
        await asyncio.sleep(0.01)
        assert pool_gauges(watch.registry, "default")[2] == 2
        release.set()
        await holder
        results = await asyncio.gather(*waiters, return_exceptions=True)
        assert sum(isinstance(r, asyncio.CancelledError) for r in results) == 2
        assert pool_gauges(watch.registry, "default") == (0, 1, 0)
        # The two survivors waited for the lock; the wait is in the histogram.
        waited = value(watch.registry, "db_client_connection_wait_time_seconds_sum", pool="default")
        assert waited >= 0.05


async def test_creation_time_is_not_wait_time(watch: PoolWatch) -> None:
    async with tortoise_on("sqlite://:memory:"):
        created = value(
            watch.registry, "db_client_connection_create_time_seconds_count", pool="default"
        )
        assert created == 1
        acquires = value(
            watch.registry, "db_client_connection_wait_time_seconds_count", pool="default"
        )
        holds = value(watch.registry, "db_client_connection_use_time_seconds_count", pool="default")
        assert acquires == holds >= 1


async def test_uninstrument_restores_tortoise() -> None:
    originals = {
        cls: (cls.__dict__["__aenter__"], cls.__dict__["__aexit__"])
        for cls in (PoolConnectionWrapper, TransactionContextPooled, ConnectionWrapper)
    }
    w = PoolWatch()
    w.instrument_tortoise()
    assert PoolConnectionWrapper.__dict__["__aenter__"] is not originals[PoolConnectionWrapper][0]
    with pytest.raises(PoolWatchError, match="already instrumented"):
        PoolWatch().instrument_tortoise()
    w.uninstrument()
    for cls, (enter, exit_) in originals.items():
        assert cls.__dict__["__aenter__"] is enter
        assert cls.__dict__["__aexit__"] is exit_
    async with tortoise_on("sqlite://:memory:"):
        await Author.all()
    assert total(w.registry, OPS) == 0


async def test_internal_fault_is_counted_not_raised(
    watch: PoolWatch, monkeypatch: pytest.MonkeyPatch
) -> None:
    def broken(sql: str) -> str:
        raise RuntimeError("bug inside poolwatch")

    monkeypatch.setattr("poolwatch.pools.observer.operation_of", broken)
    async with tortoise_on("sqlite://:memory:"):
        assert await Author.all() == []
    assert value(watch.registry, "poolwatch_internal_errors_total", component="query") >= 1


# -- PostgreSQL ----------------------------------------------------------------------------


@pytest.mark.postgres
async def test_asyncpg_gauges_match_the_pool_under_chaos(
    watch: PoolWatch, pg_database: str
) -> None:
    async with tortoise_on(_tortoise_url(pg_database, "asyncpg", minsize=1, maxsize=5)):
        await _seed(20)
        client = connections.get("default")
        ok = errors = 0

        async def good(i: int) -> None:
            nonlocal ok
            if i % 3 == 0:
                async with in_transaction() as transaction:
                    await Author.filter(id=(i % 20) + 1).first()
                    await transaction.execute_query("SELECT pg_sleep(0.005)")
            else:
                await Author.filter(id=(i % 20) + 1).first()
                await client.execute_query("SELECT pg_sleep(0.005)")
            ok += 1

        async def bad(i: int) -> None:
            nonlocal errors
            try:
                await client.execute_query("SELECT * FROM nope WHERE x = $1", [SECRET])
            except OperationalError:
                errors += 1

        async def slow() -> None:
            await client.execute_query("SELECT pg_sleep(5)")

        with poolwatch.scope("chaos"):
            tasks = [asyncio.create_task(good(i)) for i in range(60)]
            tasks += [asyncio.create_task(bad(i)) for i in range(10)]
            # Cancelled while running, and cancelled while still waiting for a connection.
            victims = [asyncio.create_task(slow()) for _ in range(10)]
            await asyncio.sleep(0.02)
            _, _, pending = pool_gauges(watch.registry, "default")
            assert pending > 0
            for victim in victims:
                victim.cancel()
            await asyncio.gather(*tasks)
            await asyncio.gather(*victims, return_exceptions=True)
        await asyncio.sleep(0.05)  # asyncpg resets cancelled connections in the background

        pool = client._pool
        used, idle, pending = pool_gauges(watch.registry, "default")
        assert (used, pending) == (0, 0)
        assert used + idle == pool.get_size()
        assert value(watch.registry, "db_client_connection_max", pool="default") == 5
        assert ok == 60
        assert errors == 10
        assert total(watch.registry, "db_client_operation_errors_total", route="chaos") == 10
        # 60 good tasks x 2 statements, 10 failing; cancelled statements still count.
        assert total(watch.registry, OPS, route="chaos") >= 130
        assert SECRET not in generate_latest(watch.registry).decode()


@pytest.mark.postgres
async def test_asyncpg_counts_equal_issued_statements(watch: PoolWatch, pg_database: str) -> None:
    async with tortoise_on(_tortoise_url(pg_database, "asyncpg", minsize=2, maxsize=4)):
        await _seed(10)
        with poolwatch.scope("count"):
            await asyncio.gather(*(Author.get(id=(i % 10) + 1) for i in range(200)))
        assert value(watch.registry, OPS, pool="default", operation="SELECT", route="count") == 200
        waits = value(
            watch.registry, "db_client_connection_wait_time_seconds_count", pool="default"
        )
        holds = value(watch.registry, "db_client_connection_use_time_seconds_count", pool="default")
        assert waits == holds
        created = value(
            watch.registry, "db_client_connection_create_time_seconds_count", pool="default"
        )
        client = connections.get("default")
        assert 2 <= created <= 4
        assert read_pool_state(client) is not None
        assert pool_gauges(watch.registry, "default")[0] == 0


@pytest.mark.postgres
async def test_asyncpg_a_released_connection_is_returning_until_the_pool_has_it(
    watch: PoolWatch, pg_database: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Multiprocess mode writes the pool gauges at every release, while asyncpg still
    # counts the connection used (its reset, a round trip, comes first): read then, it
    # is returning, not drift.
    async with tortoise_on(_tortoise_url(pg_database, "asyncpg", minsize=1, maxsize=2)):
        await _seed(2)
        observer = watch.pool_events("default")
        at_release: list[tuple[float, int]] = []
        released = observer.released

        def release(holder: int, in_flight: float = 0.0) -> None:
            released(holder, in_flight)
            drift = value(watch.registry, "poolwatch_pool_drift", pool="default")
            at_release.append((drift, observer.returning))

        monkeypatch.setattr(observer, "released", release)
        await Author.all()
        async with in_transaction():
            await Author.all()
        assert at_release == [(0, 1), (0, 1)]
        assert observer.returning == 0
        assert value(watch.registry, "poolwatch_pool_drift", pool="default") == 0


@pytest.mark.postgres
async def test_psycopg_acquire_timeouts_are_counted(watch: PoolWatch, pg_database: str) -> None:
    # Tortoise passes `timeout` (whole seconds) to psycopg_pool as its getconn timeout.
    url = _tortoise_url(pg_database, "psycopg", minsize=1, maxsize=1, timeout=1)
    async with tortoise_on(url):
        client = connections.get("default")
        holder = asyncio.create_task(client.execute_query("SELECT pg_sleep(2)"))
        await asyncio.sleep(0.1)
        outcomes = await asyncio.gather(
            *(client.execute_query("SELECT 1") for _ in range(3)), return_exceptions=True
        )
        await holder
        assert all(isinstance(o, Exception) for o in outcomes)
        assert value(watch.registry, "db_client_connection_timeouts_total", pool="default") == 3
        stats = client._pool.get_stats()
        used, idle, pending = pool_gauges(watch.registry, "default")
        assert (used, pending) == (0, 0)
        assert used + idle == stats["pool_size"]
        assert value(watch.registry, "db_client_connection_max", pool="default") == 1


# -- MySQL (the MariaDB server that the test command starts) --------------------------------


@pytest.mark.parametrize("driver", ["asyncmy", "aiomysql"])
async def test_mysql_pool_and_queries_against_the_server(
    watch: PoolWatch, mysql_database: str, driver: str
) -> None:
    """Gauges against the driver's own ``size``/``freesize``, statements and errors by
    route, with ten concurrent tasks on a pool of three."""
    pytest.importorskip(driver)
    url = "mysql://" + mysql_database.split("://", 1)[1] + "?minsize=1&maxsize=3"
    EXECUTOR_CACHE.clear()
    await Tortoise.init(db_url=url, modules={"models": ["tests.tortoise_models"]})
    try:
        client = connections.get("default")
        if driver == "aiomysql":  # Tortoise takes asyncmy when both are installed
            import aiomysql

            await client.close()
            client._pool = await aiomysql.create_pool(
                host=client.host,
                port=client.port,
                user=client.user,
                password=client.password or "",
                db=client.database,
                autocommit=True,
                minsize=1,
                maxsize=3,
            )
        await client.execute_query("SELECT 1")  # opens the pool (a checkout of its own)
        waits_before = value(
            watch.registry, "db_client_connection_wait_time_seconds_count", pool="default"
        )
        with poolwatch.scope("mysql-job"):
            await asyncio.gather(*(client.execute_query("SELECT SLEEP(0.01)") for _ in range(10)))
            with pytest.raises(Exception, match="doesn't exist"):
                await client.execute_query("DELETE FROM missing WHERE id = %s", [SECRET])
        ops = value(watch.registry, OPS, pool="default", operation="SELECT", route="mysql-job")
        assert ops == 10
        errors = value(
            watch.registry,
            "db_client_operation_errors_total",
            pool="default",
            operation="DELETE",
            route="mysql-job",
        )
        assert errors == 1
        pool = client._pool
        used, idle, pending = pool_gauges(watch.registry, "default")
        assert (used, pending) == (0, 0)
        assert idle == pool.freesize == pool.size == 3
        assert value(watch.registry, "db_client_connection_max", pool="default") == 3
        waits = value(
            watch.registry, "db_client_connection_wait_time_seconds_count", pool="default"
        )
        assert waits - waits_before == 11
        assert value(watch.registry, "poolwatch_pool_drift", pool="default") == 0
        assert SECRET not in generate_latest(watch.registry).decode()
    finally:
        await Tortoise.close_connections()


async def test_a_pools_statements_are_read_in_its_dialect(watch: PoolWatch) -> None:
    # SQLite reads a double-quoted word where a value stands as a string: the pool says so.
    async with tortoise_on("sqlite://:memory:"):
        await Author.filter(name="x").first()
        assert watch.pool_events("default").dialect == "sqlite"


async def test_a_transactions_end_separates_repeated_reads(watch: PoolWatch) -> None:
    from poolwatch.testing import capture

    async with tortoise_on("sqlite://:memory:"):
        await _seed(2)
        with capture() as captured:
            async with in_transaction():
                await Author.filter(name="a0").first()
            await Author.filter(name="a0").first()  # after the COMMIT: another read
        assert captured.duplicates == [], captured.report()
        with capture() as captured:
            await Author.filter(name="a0").first()
            await Author.filter(name="a0").first()  # nothing in between: a duplicate
        assert len(captured.duplicates) == 1, captured.report()
