"""Autosize, acquire timeouts and leak detection on Tortoise-ORM over real PostgreSQL.

The truth each test checks against is the driver's own pool (asyncpg's ``get_size`` and
``get_idle_size``) and the server's ``pg_stat_activity``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest
from sqlalchemy.pool import QueuePool
from tortoise import Tortoise, connections
from tortoise.backends.base.executor import EXECUTOR_CACHE
from tortoise.transactions import in_transaction

import poolwatch
from poolwatch import Autosize, ConfigError, PoolTimeoutError, PoolWatch
from poolwatch.sizing.budget import ServerLimits
from poolwatch.sizing.controller import Tuning
from tests.findings_helpers import NEVER_SLOW
from tests.metrics_helpers import value


def _url(dsn: str, scheme: str = "asyncpg", **params: Any) -> str:
    query = "&".join(f"{k}={v}" for k, v in params.items())
    return scheme + "://" + dsn.split("://", 1)[1] + (f"?{query}" if query else "")


@contextlib.asynccontextmanager
async def tortoise_on(url: str) -> AsyncIterator[Any]:
    EXECUTOR_CACHE.clear()
    await Tortoise.init(db_url=url, modules={"models": ["tests.tortoise_models"]})
    try:
        client = connections.get("default")
        await client.execute_query("SELECT 1")  # the pool's gate is made on first use
        yield client
    finally:
        await Tortoise.close_connections()


@pytest.fixture
def frozen() -> Autosize:
    """Autosize that decides (almost) never: the tests set the limit themselves."""
    return Autosize(min=1, max=10, initial=3, interval=3600, budget_interval=3600)


@contextlib.asynccontextmanager
async def _watching(client: Any, peak: list[int]) -> AsyncIterator[None]:
    """Appends the driver's own count of connections in use to ``peak``, every 2 ms."""

    async def watch_pool() -> None:
        while True:
            pool = client._pool
            if pool is not None:
                peak.append(pool.get_size() - pool.get_idle_size())
            await asyncio.sleep(0.002)

    watcher = asyncio.create_task(watch_pool())
    try:
        yield
    finally:
        watcher.cancel()


async def _sleepers(count: int, seconds: float, peak: list[int], client: Any) -> None:
    async def one() -> None:
        await client.execute_query(f"SELECT pg_sleep({seconds})")

    async with _watching(client, peak):
        await asyncio.gather(*(one() for _ in range(count)))


async def test_the_limit_bounds_connections_in_use_and_is_reported_as_max(
    pg_database: str, make_watch: Any, frozen: Autosize
) -> None:
    watch = make_watch()
    watch.instrument_tortoise(autosize=frozen)
    async with tortoise_on(_url(pg_database, maxsize=10)) as client:
        peak: list[int] = []
        await _sleepers(12, 0.05, peak, client)
        assert max(peak) == 3  # the driver's own count never passed the limit
        assert value(watch.registry, "db_client_connection_max", pool="default") == 3
        assert value(watch.registry, "poolwatch_pool_limit_target", pool="default") == 3

        limiter = watch.guards.sizers["default"].limiter
        limiter.set_limit(7)
        peak.clear()
        await _sleepers(12, 0.05, peak, client)
        assert max(peak) == 7
        assert value(watch.registry, "db_client_connection_max", pool="default") == 7
        assert (limiter.in_use, limiter.waiting) == (0, 0)


async def test_a_shrink_closes_connections_above_the_limit_on_their_way_back(
    pg_database: str, make_watch: Any, frozen: Autosize
) -> None:
    watch = make_watch()
    watch.instrument_tortoise(autosize=frozen)
    async with tortoise_on(_url(pg_database, maxsize=10)) as client:
        limiter = watch.guards.sizers["default"].limiter
        limiter.set_limit(8)
        await _sleepers(8, 0.05, [], client)
        assert client._pool.get_size() == 8
        limiter.set_limit(2)
        for _ in range(8):  # right after a shrink, nothing is closed yet (it may come back)
            await client.execute_query("SELECT 1")
        assert client._pool.get_size() == 8
        limiter.lowered_at -= 60  # a minute later
        for _ in range(8):  # ordinary traffic hands the extra connections back, closed
            await client.execute_query("SELECT 1")
        assert client._pool.get_size() <= 2
        used, idle = (
            value(watch.registry, "db_client_connection_count", pool="default", state=s)
            for s in ("used", "idle")
        )
        assert used + idle == client._pool.get_size()


async def test_cancelled_and_timed_out_waiters_leak_no_permit(
    pg_database: str, make_watch: Any, frozen: Autosize
) -> None:
    watch = make_watch()
    watch.instrument_tortoise(autosize=frozen)
    async with tortoise_on(_url(pg_database, maxsize=10)) as client:
        tasks = [
            asyncio.create_task(client.execute_query("SELECT pg_sleep(0.2)")) for _ in range(9)
        ]
        await asyncio.sleep(0.05)
        for task in tasks[4:]:
            task.cancel()  # three running, six waiting: cancel five of the waiters
        with contextlib.suppress(asyncio.TimeoutError):
            async with asyncio.timeout(0.05):
                await client.execute_query("SELECT pg_sleep(1)")
        await asyncio.gather(*tasks, return_exceptions=True)
        limiter = watch.guards.sizers["default"].limiter
        assert (limiter.in_use, limiter.waiting) == (0, 0)
        assert value(watch.registry, "db_client_connection_pending_requests", pool="default") == 0
        await client.execute_query("SELECT 1")  # still usable


async def _churn(client: Any, peak: list[int]) -> None:
    """Queries that finish, fail and are cancelled at any point, 20 at once."""

    async def one(index: int) -> None:
        sql = "SELECT pg_sleep(0.01)" if index % 5 else "SELECT * FROM no_such_table"
        with contextlib.suppress(Exception):
            await client.execute_query(sql)

    async with _watching(client, peak):
        for round_ in range(6):
            tasks = [asyncio.create_task(one(i)) for i in range(20)]
            await asyncio.sleep(0.005 * round_)  # cancel some waiting, running, releasing
            for task in tasks[::3]:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)


async def test_permits_go_back_from_inside_asyncpgs_release_exactly_once(
    pg_database: str, make_watch: Any, frozen: Autosize
) -> None:
    from asyncpg.pool import PoolConnectionHolder

    original = PoolConnectionHolder.__dict__["_release"]
    watch = make_watch()
    watch.instrument_tortoise(autosize=frozen)
    async with tortoise_on(_url(pg_database, maxsize=10)) as client:
        assert PoolConnectionHolder.__dict__["_release"] is not original
        peak: list[int] = []
        await _churn(client, peak)
        assert max(peak) <= 3  # a holder handed on at once is never counted twice
        limiter = watch.guards.sizers["default"].limiter
        assert (limiter.in_use, limiter.waiting) == (0, 0)
        await client.execute_query("SELECT 1")
    watch.uninstrument()
    assert PoolConnectionHolder.__dict__["_release"] is original


async def test_an_asyncpg_it_was_not_written_for_is_left_alone(
    pg_database: str, make_watch: Any, frozen: Autosize, monkeypatch: pytest.MonkeyPatch
) -> None:
    import asyncpg
    from asyncpg.pool import PoolConnectionHolder

    monkeypatch.setattr(asyncpg, "__version__", "0.99.0")
    original = PoolConnectionHolder.__dict__["_release"]
    watch = make_watch()
    watch.instrument_tortoise(autosize=frozen)
    async with tortoise_on(_url(pg_database, maxsize=10)) as client:
        assert PoolConnectionHolder.__dict__["_release"] is original
        peak: list[int] = []
        await _churn(client, peak)  # permits go back after the release instead
        assert max(peak) <= 3
        limiter = watch.guards.sizers["default"].limiter
        assert (limiter.in_use, limiter.waiting) == (0, 0)


async def test_the_controller_grows_a_waiting_pool_and_says_so(
    pg_database: str, make_watch: Any, caplog: pytest.LogCaptureFixture
) -> None:
    watch = make_watch()
    watch.instrument_tortoise(autosize=Autosize(min=2, max=16, interval=0.2))
    caplog.set_level(logging.INFO, logger="poolwatch.autosize")
    async with tortoise_on(_url(pg_database, maxsize=16)) as client:
        await client.execute_query("SELECT 1")
        for _ in range(4):  # an I/O-bound load: 24 users sleeping in the database
            await _sleepers(24, 0.3, [], client)
        limit = watch.guards.sizers["default"].limiter.limit
        assert limit > 4
        assert value(watch.registry, "poolwatch_pool_limit_target", pool="default") == limit
        assert (
            value(watch.registry, "poolwatch_pool_resizes_total", pool="default", direction="up")
            >= 1
        )
        changes = [r for r in caplog.records if hasattr(r, "poolwatch_resize")]
        assert changes, caplog.text
        first = changes[0].poolwatch_resize
        assert first["old"] == 2
        assert first["new"] > 2
        assert first["reason"] == "requests waiting"


async def test_acquire_timeout_names_pool_limit_and_longest_holder(
    pg_database: str, make_watch: Any
) -> None:
    watch = make_watch(acquire_timeout=0.3)
    watch.instrument_tortoise(autosize=Autosize(min=1, max=1, interval=3600))
    async with tortoise_on(_url(pg_database, maxsize=4)) as client:

        async def hold() -> None:
            with poolwatch.scope("GET /reports"):
                async with in_transaction() as connection:
                    await connection.execute_query("SELECT pg_sleep(1)")

        holder = asyncio.create_task(hold())
        await asyncio.sleep(0.1)
        with pytest.raises(PoolTimeoutError) as raised:
            await client.execute_query("SELECT 1")
        await holder
    error = raised.value
    assert isinstance(error, TimeoutError)
    assert (error.pool, error.limit, error.in_use) == ("default", 1, 1)
    assert error.holders
    assert error.holders[0][0] == "GET /reports"
    assert "pool 'default': no connection within 0.30 s (limit 1, in use 1" in str(error)
    assert value(watch.registry, "db_client_connection_timeouts_total", pool="default") == 1


async def test_acquire_timeout_without_autosize(pg_database: str, make_watch: Any) -> None:
    watch = make_watch(acquire_timeout=0.2)
    watch.instrument_tortoise()
    async with tortoise_on(_url(pg_database, maxsize=1)) as client:
        holder = asyncio.create_task(client.execute_query("SELECT pg_sleep(0.6)"))
        await asyncio.sleep(0.1)
        with pytest.raises(PoolTimeoutError, match="limit unknown, in use 1"):
            await client.execute_query("SELECT 1")
        await holder
        await client.execute_query("SELECT 1")
    assert value(watch.registry, "db_client_connection_timeouts_total", pool="default") == 1


async def test_a_connection_held_too_long_is_reported_once_with_its_line(
    pg_database: str, make_watch: Any, caplog: pytest.LogCaptureFixture
) -> None:
    watch = make_watch(leak_threshold=0.3)
    watch.instrument_tortoise()
    caplog.set_level(logging.WARNING, logger="poolwatch.leaks")
    async with tortoise_on(_url(pg_database, maxsize=4)):
        with poolwatch.scope("POST /import"):
            async with in_transaction() as connection:  # the line a leak report names
                await connection.execute_query("SELECT pg_sleep(1.6)")
    leaks = [r for r in caplog.records if hasattr(r, "poolwatch_leak")]
    assert len(leaks) == 1, caplog.text
    leak = leaks[0].poolwatch_leak
    assert leak["route"] == "POST /import"
    assert leak["call_site"].startswith("tests/sizing/test_autosize.py:")
    assert "in test_a_connection_held_too_long" in leak["call_site"]
    assert (
        value(
            watch.registry, "poolwatch_connection_leaks_total", pool="default", route="POST /import"
        )
        == 1
    )


async def test_waiting_at_the_budgets_ceiling_reads_the_budget_again_early(
    pg_database: str, make_watch: Any
) -> None:
    # budget_interval is an hour: after the read at start, only the early read (requests
    # waiting with the limit at the budget's ceiling) can read it again within the test.
    watch = make_watch()
    watch.instrument_tortoise(
        autosize=Autosize(min=2, max=40, interval=3600, budget_interval=3600, budget_share=0.5)
    )
    async with tortoise_on(_url(pg_database, maxsize=40)) as client:
        await client.execute_query("SELECT 1")
        sizer = watch.guards.sizers["default"]
        reads: list[ServerLimits] = []
        real = sizer.read_limits
        assert real is not None

        async def counted() -> ServerLimits:
            limits = await real()
            reads.append(limits)
            return limits

        sizer.read_limits = counted
        await asyncio.sleep(1.0)  # the read at start is over
        before = len(reads)
        sizer.ceiling = sizer.limiter.limit  # as after a read that left no room to grow
        assert not sizer.budget_blocked()  # nobody waits: no reason to read early
        holders = [
            asyncio.create_task(client.execute_query("SELECT pg_sleep(2)"))
            for _ in range(sizer.limiter.limit + 3)
        ]
        try:
            for _ in range(30):
                if len(reads) > before:
                    break
                await asyncio.sleep(0.1)
        finally:
            await asyncio.gather(*holders)
    assert len(reads) > before, "no budget read while requests waited at its ceiling"


async def test_a_budget_that_cannot_be_read_holds_the_limit_and_shows_in_metrics(
    pg_database: str, make_watch: Any, caplog: pytest.LogCaptureFixture
) -> None:
    watch = make_watch(slow_query_threshold=NEVER_SLOW)  # the budget's log lines alone
    watch.instrument_tortoise(autosize=Autosize(min=2, max=20, interval=3600, budget_interval=3600))
    async with tortoise_on(_url(pg_database, maxsize=20)):
        sizer = watch.guards.sizers["default"]
        maintenance = watch.guards.maintenance
        await maintenance._read_budget(sizer)  # a first read that works
        assert sizer.ceiling is not None
        read_at = value(
            watch.registry, "poolwatch_autosize_budget_last_read_timestamp_seconds", pool="default"
        )
        ceiling = sizer.ceiling

        async def refused() -> Any:
            raise ConnectionRefusedError("the server went away")

        real, sizer.read_limits = sizer.read_limits, refused
        with caplog.at_level(logging.WARNING, logger="poolwatch.autosize"):
            for _ in range(4):
                await maintenance._read_budget(sizer)
        records = [(r.levelno, r.getMessage()) for r in caplog.records]
        assert len(records) == 2, records  # the first failure, then the hold
        assert "ConnectionRefusedError: the server went away" in records[0][1]
        assert records[1][0] == logging.ERROR
        assert "could not be read 3 times in a row" in records[1][1]
        assert "Set autosize.budget" in records[1][1]
        assert all(r.exc_info is None for r in caplog.records)  # no traceback
        # The last budget read still bounds growth: never the pool's own maximum.
        assert sizer.ceiling == ceiling
        assert sizer.effective_max() <= ceiling
        assert (
            value(watch.registry, "poolwatch_autosize_budget_read_errors_total", pool="default")
            == 4
        )
        assert (
            value(
                watch.registry,
                "poolwatch_autosize_budget_last_read_timestamp_seconds",
                pool="default",
            )
            == read_at
        )
        # The database's answer is no fault of poolwatch's; a fault of its own is one.
        assert value(watch.registry, "poolwatch_internal_errors_total", component="budget") == 0

        async def broken() -> Any:
            raise RuntimeError("got Future attached to a different loop")

        sizer.read_limits = broken
        await maintenance._read_budget(sizer)
        assert value(watch.registry, "poolwatch_internal_errors_total", component="budget") == 1

        sizer.read_limits = real
        caplog.clear()
        with caplog.at_level(logging.WARNING, logger="poolwatch.autosize"):
            await maintenance._read_budget(sizer)
        assert sizer.budget_failures == 0
        assert [r.getMessage() for r in caplog.records] == [
            "pool default: the database's connection budget is read again"
        ]
        assert (
            value(
                watch.registry,
                "poolwatch_autosize_budget_last_read_timestamp_seconds",
                pool="default",
            )
            > read_at
        )


@pytest.mark.parametrize(
    ("value_", "setting"),
    [
        ({"min": 0}, "autosize.min"),
        ({"min": 5, "max": 4}, "autosize.max"),
        ({"min": 2, "max": 8, "initial": 9}, "autosize.initial"),
        ({"budget_share": 0}, "autosize.budget_share"),
        ({"interval": 0}, "autosize.interval"),
        ({"mini": 3}, "autosize"),
        ("yes", "autosize"),
    ],
)
def test_bad_autosize_settings_fail_at_once(value_: Any, setting: str) -> None:
    watch = PoolWatch()
    try:
        with pytest.raises(ConfigError) as raised:
            watch.instrument_tortoise(autosize=value_)
        assert raised.value.setting == setting
    finally:
        watch.uninstrument()


def test_a_max_above_a_sqlalchemy_pools_own_fails_at_instrument(make_watch: Any) -> None:
    from sqlalchemy import create_engine

    engine = create_engine("sqlite://", poolclass=QueuePool, pool_size=20, max_overflow=10)
    watch = make_watch()
    with pytest.raises(ConfigError) as raised:
        watch.instrument_sqlalchemy(engine, autosize=Autosize(max=100))
    assert raised.value.setting == "autosize.max"
    message = str(raised.value)
    assert message.startswith("autosize.max=100: must not exceed the pool's own maximum size (30)")
    assert "pool_size + max_overflow" in message
    assert "main" not in watch.guards.sizers  # nothing was left half made


async def test_a_max_above_a_tortoise_pools_own_met_in_use_is_one_error_and_kept_in_bounds(
    pg_database: str, make_watch: Any, caplog: pytest.LogCaptureFixture
) -> None:
    # Tortoise's connections are met at their first query: raising there would fail a
    # request, so the setting is named once, at error level, and the pool's own max used.
    watch = make_watch()
    watch.instrument_tortoise(autosize=Autosize(min=2, max=100, interval=3600))
    with caplog.at_level(logging.WARNING, logger="poolwatch"):
        async with tortoise_on(_url(pg_database, maxsize=30)) as client:
            await client.execute_query("SELECT 1")
            sizer = watch.guards.sizers["default"]
            assert (sizer.lower, sizer.upper) == (2, 30)
    errors = [r for r in caplog.records if "autosize.max=100" in r.getMessage()]
    assert len(errors) == 1, [r.getMessage() for r in caplog.records]
    assert errors[0].levelno == logging.ERROR
    assert "must not exceed the pool's own maximum size (30)" in errors[0].getMessage()


def test_autosize_accepts_true_a_dict_and_tuning() -> None:
    assert Autosize.coerce(True) == Autosize()
    assert Autosize.coerce({"min": 3, "max": 9}) == Autosize(min=3, max=9)
    assert Autosize.coerce(None) is None
    assert Autosize(tuning=Tuning(cooldown=1)).tuning.cooldown == 1


# -- SQLAlchemy --------------------------------------------------------------------------


def _sa_url(dsn: str, driver: str) -> str:
    return f"postgresql+{driver}://" + dsn.split("://", 1)[1]


def test_sqlalchemy_sync_limit_holds_across_threads_and_shrinks(
    pg_database: str, make_watch: Any, frozen: Autosize
) -> None:
    import threading

    from sqlalchemy import create_engine, text

    engine = create_engine(_sa_url(pg_database, "psycopg"), pool_size=2, max_overflow=8)
    watch = make_watch()
    watch.instrument_sqlalchemy(engine, pool="main", autosize=frozen)
    peak: list[int] = []
    try:

        def sleeper() -> None:
            with engine.connect() as connection:
                peak.append(engine.pool.checkedout())
                connection.execute(text("SELECT pg_sleep(0.05)"))

        def burst(count: int) -> None:
            threads = [threading.Thread(target=sleeper) for _ in range(count)]
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join()

        burst(12)
        assert max(peak) == 3
        limiter = watch.guards.sizers["main"].limiter
        limiter.set_limit(6)
        peak.clear()
        burst(12)
        assert max(peak) == 6
        assert value(watch.registry, "db_client_connection_max", pool="main") == 6
        limiter.set_limit(2)
        limiter.lowered_at -= 60  # past the moment after a shrink when nothing is closed
        for _ in range(6):
            with engine.connect() as connection:
                connection.execute(text("SELECT 1"))
        assert engine.pool.checkedin() + engine.pool.checkedout() <= 2
        assert (limiter.in_use, limiter.waiting) == (0, 0)
    finally:
        engine.dispose()


async def test_sqlalchemy_async_limit_holds_and_times_out(
    pg_database: str, make_watch: Any
) -> None:
    from sqlalchemy import text
    from sqlalchemy.ext.asyncio import create_async_engine

    engine = create_async_engine(_sa_url(pg_database, "asyncpg"), pool_size=2, max_overflow=8)
    watch = make_watch(acquire_timeout=0.3)
    # A budget by hand: no read of the server's takes a permit while the test counts them.
    watch.instrument_sqlalchemy(
        engine,
        pool="main",
        autosize=Autosize(min=1, max=10, initial=2, interval=3600, budget=10),
    )
    peak: list[int] = []
    try:

        async def sleeper(seconds: float) -> None:
            async with engine.connect() as connection:
                peak.append(engine.sync_engine.pool.checkedout())
                await connection.execute(text(f"SELECT pg_sleep({seconds})"))

        await asyncio.gather(*(sleeper(0.05) for _ in range(10)))
        assert max(peak) == 2
        holders = [asyncio.create_task(sleeper(1.0)) for _ in range(2)]
        await asyncio.sleep(0.1)
        with pytest.raises(PoolTimeoutError, match="limit 2, in use 2"):
            await sleeper(0.01)
        await asyncio.gather(*holders)
        limiter = watch.guards.sizers["main"].limiter
        assert (limiter.in_use, limiter.waiting) == (0, 0)
    finally:
        await engine.dispose()


def test_sqlalchemy_autosize_needs_a_queue_pool(make_watch: Any) -> None:
    from sqlalchemy import create_engine
    from sqlalchemy.pool import NullPool

    engine = create_engine("sqlite://", poolclass=NullPool)
    with pytest.raises(ConfigError, match="needs a QueuePool"):
        make_watch().instrument_sqlalchemy(engine, autosize=True)


# -- two instances, one database budget ----------------------------------------------------


@pytest.fixture
def limited_role(pg_database: str) -> Iterator[str]:
    """A role allowed 12 connections: a small database budget shared by two instances."""
    import uuid

    import psycopg
    from psycopg import sql

    name = f"poolwatch_budget_{uuid.uuid4().hex[:8]}"  # PUBLIC may connect to the database
    with psycopg.connect(pg_database, autocommit=True) as admin:
        admin.execute(
            sql.SQL("CREATE ROLE {} LOGIN CONNECTION LIMIT 12").format(sql.Identifier(name))
        )
    try:
        rest = pg_database.split("://", 1)[1].split("@", 1)[1]
        yield f"asyncpg://{name}@{rest}"
    finally:
        with psycopg.connect(pg_database, autocommit=True) as admin:
            admin.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE usename = %s",
                (name,),
            )
            admin.execute(sql.SQL("DROP ROLE IF EXISTS {}").format(sql.Identifier(name)))


def _instances(url: str, mode: str, seconds: float = 5.0) -> list[dict[str, Any]]:
    import json
    import subprocess
    import sys

    command = [sys.executable, "-m", "tests.budget_instance", url, str(seconds), "30", mode]
    running = [
        subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for _ in range(2)
    ]
    results = []
    for process in running:
        out, err = process.communicate(timeout=seconds + 60)
        assert process.returncode == 0, err[-3000:]
        results.append(json.loads(out.strip().splitlines()[-1]))
    return results


def test_two_instances_with_autosize_never_exceed_a_small_budget(limited_role: str) -> None:
    # Each pool may open 20: together far past the role's 12.
    url = limited_role + "?maxsize=20&minsize=1"
    static = _instances(url, "static", seconds=3.0)
    assert sum(r["refused"] for r in static) > 0  # the budget really is too small

    sized = _instances(url, "autosize")
    assert [r["refused"] for r in sized] == [0, 0], sized
    assert all(r["done"] > 0 for r in sized)
    assert all(2 <= r["highest_limit"] <= 12 for r in sized), sized


async def test_a_manual_budget_caps_growth(pg_database: str, make_watch: Any) -> None:
    watch = make_watch()
    watch.instrument_tortoise(autosize=Autosize(min=1, max=16, interval=0.2, budget=3))
    async with tortoise_on(_url(pg_database, maxsize=16)) as client:
        peak: list[int] = []
        for _ in range(3):
            await _sleepers(20, 0.3, peak, client)
        assert max(peak) == 3
        assert watch.guards.sizers["default"].limiter.limit == 3
        assert value(watch.registry, "poolwatch_pool_limit_max", pool="default") == 3


async def test_the_background_task_stops_with_the_app_lifespan(
    pg_database: str, make_watch: Any
) -> None:
    from starlette.applications import Starlette

    watch = make_watch()
    app = watch.wrap(Starlette())
    watch.instrument_tortoise(autosize=Autosize(min=1, max=4, interval=0.2))
    messages = iter([{"type": "lifespan.startup"}, {"type": "lifespan.shutdown"}])
    sent: list[str] = []

    async def receive() -> dict[str, str]:
        message = next(messages)
        if message["type"] == "lifespan.shutdown":
            async with tortoise_on(_url(pg_database, maxsize=4)):
                assert watch.guards.maintenance.running  # started by the first checkout
        return message

    async def send(message: dict[str, Any]) -> None:
        sent.append(message["type"])

    await app({"type": "lifespan", "asgi": {"version": "3.0"}}, receive, send)
    assert sent == ["lifespan.startup.complete", "lifespan.shutdown.complete"]
    assert not watch.guards.maintenance.running
