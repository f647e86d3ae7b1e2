"""The SQLAlchemy adapter, against real pools: SQLite (pysqlite, aiosqlite) and PostgreSQL.

Every test reads what a user would read, the metrics in the registry, and compares them
with the pool's own counters or with what the test itself did.
"""

from __future__ import annotations

import asyncio
import contextvars
import gc
import logging
import sqlite3
import threading
import time
import uuid
import weakref
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy.exc
from prometheus_client import generate_latest
from sqlalchemy import (
    Column,
    Engine,
    Integer,
    MetaData,
    String,
    Table,
    bindparam,
    create_engine,
    event,
    insert,
    make_url,
    select,
    text,
    update,
)
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine
from sqlalchemy.pool import AsyncAdaptedQueuePool, NullPool, Pool, QueuePool, StaticPool

import poolwatch
from poolwatch import ConfigError, PoolWatch, PoolWatchError
from poolwatch.adapters.sqlalchemy import SQLAlchemyInstrumentation
from poolwatch.adapters.sqlalchemy import instrumentation as adapter
from poolwatch.pools.observer import PoolObserver
from poolwatch.safety import FaultReporter
from poolwatch.testing import capture

POOL = "main"
SEED_ROWS = 10


# -- reading the registry --------------------------------------------------------------


def sample(watch: PoolWatch, name: str, **labels: str) -> float:
    """A sample of pool ``main``; 0.0 when the series does not exist (yet)."""
    value = watch.registry.get_sample_value(name, {"pool": POOL, **labels})
    return 0.0 if value is None else value


def used(watch: PoolWatch) -> float:
    return sample(watch, "db_client_connection_count", state="used")


def idle(watch: PoolWatch) -> float:
    return sample(watch, "db_client_connection_count", state="idle")


def pending(watch: PoolWatch) -> float:
    return sample(watch, "db_client_connection_pending_requests")


def waits(watch: PoolWatch) -> float:
    return sample(watch, "db_client_connection_wait_time_seconds_count")


def creations(watch: PoolWatch) -> float:
    return sample(watch, "db_client_connection_create_time_seconds_count")


def timeouts(watch: PoolWatch) -> float:
    return sample(watch, "db_client_connection_timeouts_total")


def queries(watch: PoolWatch, operation: str, route: str) -> float:
    return sample(
        watch, "db_client_operation_duration_seconds_count", operation=operation, route=route
    )


def errors(watch: PoolWatch, operation: str, route: str) -> float:
    return sample(watch, "db_client_operation_errors_total", operation=operation, route=route)


def own_checkouts(watch: PoolWatch) -> int:
    """Checkouts poolwatch saw start and not end: 0 at rest, or a holder leaked."""
    observer = watch.pool_events(POOL)
    if not isinstance(observer, PoolObserver):
        raise TypeError(f"expected a PoolObserver, got {type(observer).__name__}")
    return observer.checked_out()


def assert_at_rest(watch: PoolWatch, pool: Pool) -> None:
    """Nothing checked out or waiting, and the gauges are the pool's own numbers."""
    if not isinstance(pool, QueuePool):
        raise TypeError(f"expected a QueuePool, got {type(pool).__name__}")
    assert pending(watch) == 0
    assert own_checkouts(watch) == 0
    assert pool.checkedout() == 0
    assert used(watch) == 0
    assert idle(watch) == pool.checkedin()
    assert idle(watch) + used(watch) == pool.checkedin() + pool.checkedout()


def count_connects(engine: Engine | AsyncEngine) -> list[int]:
    """A one-item list holding the number of DBAPI connections the engine opened."""
    sync_engine = engine.sync_engine if isinstance(engine, AsyncEngine) else engine
    opened = [0]

    def on_connect(dbapi_connection: Any, entry: Any) -> None:
        opened[0] += 1

    event.listen(sync_engine.pool, "connect", on_connect)
    return opened


async def wait_until(condition: Callable[[], bool]) -> None:
    """Poll ``condition`` (a metric: nothing to wait on) for up to 5 seconds."""
    async with asyncio.timeout(5):
        while not condition():  # noqa: ASYNC110
            await asyncio.sleep(0.005)


# -- databases ---------------------------------------------------------------------------


def pg_url(dsn: str, driver: str) -> str:
    return make_url(dsn).set(drivername=f"postgresql+{driver}").render_as_string(False)


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
        await engine.dispose()
        return engine

    yield make
    for engine in engines:
        await engine.dispose()
    cleanup = create_async_engine(async_url, poolclass=NullPool)
    async with cleanup.begin() as conn:
        await conn.run_sync(lambda sync: table.drop(sync, checkfirst=True))
    await cleanup.dispose()


# -- sync engines ------------------------------------------------------------------------


def test_gauges_are_the_pools_own_counts(
    watch: PoolWatch, make_engine: Callable[..., Engine], table: Table
) -> None:
    engine = make_engine(pool_size=3, max_overflow=2)
    opened = count_connects(engine)
    watch.instrument_sqlalchemy(engine, pool=POOL)
    pool = engine.pool
    assert isinstance(pool, QueuePool)
    assert sample(watch, "db_client_connection_max") == 5
    assert (used(watch), idle(watch)) == (0, 0)

    held = [engine.connect() for _ in range(4)]  # the pool's 3 and 1 overflow
    for conn in held:
        conn.execute(select(table).where(table.c.id == 1)).all()
    assert used(watch) == pool.checkedout() == 4
    assert idle(watch) == pool.checkedin() == 0

    for conn in held[:2]:
        conn.close()
    assert used(watch) == pool.checkedout() == 2
    assert idle(watch) == pool.checkedin() == 2

    for conn in held[2:]:
        conn.close()
    assert_at_rest(watch, pool)
    assert idle(watch) == 3  # the overflow connection was closed on return
    assert waits(watch) == 4
    assert sample(watch, "db_client_connection_use_time_seconds_count") == 4
    assert creations(watch) == opened[0] == 4


def test_statements_are_counted_once_each_by_route(
    watch: PoolWatch, make_engine: Callable[..., Engine], table: Table
) -> None:
    engine = make_engine()
    watch.instrument_sqlalchemy(engine, pool=POOL)
    with poolwatch.scope("report"), engine.begin() as conn:
        for i in range(1, 6):
            conn.execute(select(table).where(table.c.id == i)).all()
        # executemany: one statement, however many rows
        conn.execute(insert(table), [{"id": 100 + i, "name": "new"} for i in range(3)])
        conn.execute(
            update(table).where(table.c.id == bindparam("key")).values(name=bindparam("v")),
            [{"key": 100 + i, "v": f"renamed-{i}"} for i in range(3)],
        )
    with engine.connect() as conn:
        conn.execute(select(table.c.id)).all()

    assert queries(watch, "SELECT", "report") == 5
    assert queries(watch, "INSERT", "report") == 1
    assert queries(watch, "UPDATE", "report") == 1
    assert queries(watch, "SELECT", "none") == 1
    assert errors(watch, "SELECT", "report") == 0
    assert_at_rest(watch, engine.pool)


def test_a_failing_statement_is_counted_and_its_error_passes_through_untouched(
    watch: PoolWatch, make_engine: Callable[..., Engine], table: Table
) -> None:
    engine = make_engine()
    bad = text(f"SELECT missing_column FROM {table.name}")

    def run_bad() -> sqlalchemy.exc.DBAPIError:
        with engine.connect() as conn, pytest.raises(sqlalchemy.exc.DBAPIError) as caught:
            conn.execute(bad)
        return caught.value

    plain = run_bad()
    watch.instrument_sqlalchemy(engine, pool=POOL)
    with poolwatch.scope("broken"):
        observed = run_bad()

    assert type(observed) is type(plain)
    assert type(observed.orig) is type(plain.orig)
    assert str(observed.orig) == str(plain.orig)
    assert observed.statement == plain.statement
    assert queries(watch, "SELECT", "broken") == 1
    assert errors(watch, "SELECT", "broken") == 1
    assert_at_rest(watch, engine.pool)


def test_acquire_timeouts_are_counted_and_leave_nothing_pending(
    watch: PoolWatch, make_engine: Callable[..., Engine]
) -> None:
    engine = make_engine(pool_size=1, max_overflow=0, pool_timeout=0.05)
    watch.instrument_sqlalchemy(engine, pool=POOL)
    with engine.connect():
        for _ in range(3):
            with pytest.raises(sqlalchemy.exc.TimeoutError):
                engine.connect()
        assert pending(watch) == 0
        assert used(watch) == 1
    assert timeouts(watch) == 3
    # The observer puts a timed-out wait in the wait histogram too: 1 success + 3 timeouts.
    assert waits(watch) == 1 + 3
    assert sample(watch, "db_client_connection_wait_time_seconds_sum") >= 3 * 0.05
    assert_at_rest(watch, engine.pool)
    assert idle(watch) == 1


def test_eight_threads_share_the_pool_and_see_the_callers_scope(
    watch: PoolWatch, make_engine: Callable[..., Engine], table: Table
) -> None:
    threads, rounds, bad_every = 8, 25, 5
    engine = make_engine(pool_size=3, max_overflow=0, pool_timeout=30)
    opened = count_connects(engine)
    watch.instrument_sqlalchemy(engine, pool=POOL)
    failures = 0
    lock = threading.Lock()

    def work(worker: int) -> None:
        nonlocal failures
        for i in range(rounds):
            with engine.connect() as conn:
                row_id = (worker + i) % SEED_ROWS + 1
                conn.execute(select(table).where(table.c.id == row_id)).all()
                if i % bad_every == 0:
                    try:
                        conn.execute(text(f"SELECT nope FROM {table.name}"))
                    except sqlalchemy.exc.DBAPIError:
                        with lock:
                            failures += 1

    # Like Starlette's threadpool: each thread runs in a copy of the caller's context.
    with poolwatch.scope("threads"), ThreadPoolExecutor(threads) as executor:
        jobs = [executor.submit(contextvars.copy_context().run, work, n) for n in range(threads)]
        for job in jobs:
            job.result()

    acquires = threads * rounds
    assert failures == threads * (rounds // bad_every)
    assert queries(watch, "SELECT", "threads") == acquires + failures
    assert errors(watch, "SELECT", "threads") == failures
    assert queries(watch, "SELECT", "none") == 0
    assert waits(watch) == acquires
    assert sample(watch, "db_client_connection_use_time_seconds_count") == acquires
    assert creations(watch) == opened[0] <= 3
    assert timeouts(watch) == 0
    assert_at_rest(watch, engine.pool)


async def test_a_sync_engine_in_to_thread_sees_the_async_callers_scope(
    watch: PoolWatch, make_engine: Callable[..., Engine], table: Table
) -> None:
    engine = make_engine()
    watch.instrument_sqlalchemy(engine, pool=POOL)

    def lookup() -> None:
        with engine.connect() as conn:
            conn.execute(select(table).where(table.c.id == 1)).all()

    with poolwatch.scope("offloaded"):
        await asyncio.gather(*(asyncio.to_thread(lookup) for _ in range(4)))
    assert queries(watch, "SELECT", "offloaded") == 4
    assert_at_rest(watch, engine.pool)


def test_creation_time_is_reported_apart_from_wait_time(watch: PoolWatch, tmp_path: Path) -> None:
    path = tmp_path / "slow.db"

    def slow_connect() -> sqlite3.Connection:
        time.sleep(0.05)  # a far-away server
        return sqlite3.connect(path, check_same_thread=False)

    # A user-supplied creator: the public do_connect event would not see it.
    engine = create_engine("sqlite://", creator=slow_connect, poolclass=QueuePool)
    try:
        opened = count_connects(engine)
        watch.instrument_sqlalchemy(engine, pool=POOL)
        for _ in range(3):
            with engine.connect() as conn:
                conn.execute(text("SELECT 1")).all()
        assert creations(watch) == opened[0] == 1
        assert sample(watch, "db_client_connection_create_time_seconds_sum") >= 0.05
        assert waits(watch) == 3
        assert sample(watch, "db_client_connection_wait_time_seconds_sum") < 0.05
    finally:
        engine.dispose()


def test_dispose_hooks_the_new_pool_and_uninstrument_unhooks_both(
    make_engine: Callable[..., Engine], table: Table
) -> None:
    watch = PoolWatch()
    engine = make_engine(pool_size=2)
    watch.instrument_sqlalchemy(engine, pool=POOL)
    old = engine.connect()
    old_pool = engine.pool
    engine.dispose()
    new_pool = engine.pool
    assert new_pool is not old_pool
    with engine.connect() as conn:
        conn.execute(select(table).where(table.c.id == 1)).all()
        assert used(watch) == 1  # the new pool's count; the old connection is not its own
    old.close()  # back to the retired pool, still a release
    assert waits(watch) == 2
    assert sample(watch, "db_client_connection_use_time_seconds_count") == 2
    assert_at_rest(watch, new_pool)

    # Instrumented or not, a retired pool (and what was returned to it) can be collected.
    old_pool.dispose()
    retired = weakref.ref(old_pool)
    del old_pool, old
    gc.collect()
    assert retired() is None

    watch.uninstrument()
    assert {"connect", "recreate"}.isdisjoint(vars(new_pool))
    with engine.connect() as conn:
        conn.execute(select(table).where(table.c.id == 1)).all()
    assert waits(watch) == 2
    assert sample(watch, "db_client_connection_use_time_seconds_count") == 2
    assert queries(watch, "SELECT", "none") == 1


def test_uninstrument_removes_every_hook(make_engine: Callable[..., Engine], table: Table) -> None:
    engine = make_engine()
    pool, dialect = engine.pool, engine.dialect
    creator = vars(pool)["_invoke_creator"]
    first = PoolWatch()
    first.instrument_sqlalchemy(engine, pool=POOL)
    first.uninstrument()

    assert {"connect", "recreate"}.isdisjoint(vars(pool))
    assert vars(pool)["_invoke_creator"] is creator
    assert {"do_execute", "do_executemany", "do_execute_no_params"}.isdisjoint(vars(dialect))
    with engine.connect() as conn:
        conn.execute(select(table).where(table.c.id == 1)).all()
    assert (waits(first), creations(first), queries(first, "SELECT", "none")) == (0, 0, 0)
    assert sample(first, "db_client_connection_use_time_seconds_count") == 0

    # The engine can be instrumented again, and is then counted once, not twice.
    second = PoolWatch()
    second.instrument_sqlalchemy(engine, pool=POOL)
    try:
        with engine.connect() as conn:
            conn.execute(select(table).where(table.c.id == 1)).all()
        assert queries(second, "SELECT", "none") == 1
        assert waits(second) == 1
    finally:
        second.uninstrument()


def test_instrumenting_an_engine_twice_raises(
    watch: PoolWatch, make_engine: Callable[..., Engine], table: Table
) -> None:
    engine = make_engine()
    watch.instrument_sqlalchemy(engine, pool=POOL)
    with pytest.raises(PoolWatchError, match=r"already instrumented by poolwatch as pool='main'"):
        watch.instrument_sqlalchemy(engine, pool="again")
    other = PoolWatch()
    try:
        with pytest.raises(PoolWatchError, match="already instrumented"):
            other.instrument_sqlalchemy(engine, pool=POOL)
    finally:
        other.uninstrument()
    with engine.connect() as conn:
        conn.execute(select(table).where(table.c.id == 1)).all()
    assert queries(watch, "SELECT", "none") == 1


async def test_an_async_engine_and_its_sync_engine_are_one_engine(
    watch: PoolWatch, make_async_engine: Callable[..., Awaitable[AsyncEngine]]
) -> None:
    engine = await make_async_engine()
    watch.instrument_sqlalchemy(engine, pool=POOL)
    other = PoolWatch()
    try:
        with pytest.raises(PoolWatchError, match="already instrumented"):
            other.instrument_sqlalchemy(engine.sync_engine, pool=POOL)
    finally:
        other.uninstrument()


def test_parameter_values_never_reach_the_metrics(
    watch: PoolWatch, make_engine: Callable[..., Engine], table: Table
) -> None:
    secret = "pw-secret-7f3a9c1e"
    engine = make_engine()
    watch.instrument_sqlalchemy(engine, pool=POOL)
    with engine.begin() as conn:
        conn.execute(insert(table).values(id=500, name=secret))
        conn.execute(select(table).where(table.c.name == secret)).all()
        conn.execute(update(table).where(table.c.name == secret).values(name=secret + "-2"))
    with engine.connect() as conn, pytest.raises(sqlalchemy.exc.DBAPIError):
        conn.execute(text(f"SELECT nope FROM {table.name} WHERE name = :v"), {"v": secret})
    exposition = generate_latest(watch.registry).decode()
    assert queries(watch, "INSERT", "none") == 1
    assert errors(watch, "SELECT", "none") == 1
    assert secret not in exposition


def test_a_fault_in_poolwatch_never_reaches_the_app(
    make_engine: Callable[..., Engine], table: Table, caplog: pytest.LogCaptureFixture
) -> None:
    class Broken:
        name = POOL

        def __getattr__(self, attribute: str) -> Any:
            def fail(*args: Any) -> Any:
                raise RuntimeError(f"broken {attribute}")

            return fail

    faults: list[str] = []
    engine = make_engine(pool_size=1, max_overflow=0, pool_timeout=0.05)
    instrumentation = SQLAlchemyInstrumentation(engine, Broken(), FaultReporter(faults.append))
    instrumentation.install()
    try:
        with caplog.at_level(logging.CRITICAL, logger="poolwatch"), engine.connect() as conn:
            rows = conn.execute(select(table).where(table.c.id <= 3)).all()
            with pytest.raises(sqlalchemy.exc.DBAPIError):
                conn.execute(text("SELECT nope"))
            with pytest.raises(sqlalchemy.exc.TimeoutError):
                engine.connect()
        assert len(rows) == 3
        assert faults
        assert set(faults) == {"sqlalchemy"}
    finally:
        instrumentation.uninstall()


@pytest.mark.parametrize("not_an_engine", ["sqlite://", None, object()])
def test_only_engines_are_accepted_and_a_refusal_leaves_no_series(not_an_engine: Any) -> None:
    watch = PoolWatch()
    before = {s.name for f in watch.registry.collect() for s in f.samples}
    with pytest.raises(ConfigError, match=r"^engine='\w+': must be a SQLAlchemy Engine"):
        watch.instrument_sqlalchemy(not_an_engine, pool=POOL)
    after = [s for f in watch.registry.collect() for s in f.samples if s.name not in before]
    assert after == []
    assert {s.labels.get("pool") for f in watch.registry.collect() for s in f.samples} == {None}


def test_an_untested_sqlalchemy_version_is_logged(
    watch: PoolWatch,
    make_engine: Callable[..., Engine],
    caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(adapter, "sqlalchemy_version", lambda: (2, 2))
    engine = make_engine()
    with caplog.at_level(logging.WARNING, logger="poolwatch"):
        watch.instrument_sqlalchemy(engine, pool=POOL)
    assert "tested with SQLAlchemy 2.0 to 2.1, found 2.2" in caplog.text


# -- other pool classes ------------------------------------------------------------------


def test_null_pool_counts_its_own_checkouts(watch: PoolWatch, tmp_path: Path) -> None:
    engine = create_engine(f"sqlite:///{tmp_path / 'null.db'}", poolclass=NullPool)
    try:
        opened = count_connects(engine)
        watch.instrument_sqlalchemy(engine, pool=POOL)
        held = [engine.connect() for _ in range(3)]
        assert used(watch) == 3
        assert idle(watch) == 0
        assert watch.registry.get_sample_value("db_client_connection_max", {"pool": POOL}) is None
        for conn in held:
            conn.execute(text("SELECT 1")).all()
            conn.close()
        assert (used(watch), idle(watch), pending(watch)) == (0, 0, 0)
        assert waits(watch) == 3
        assert creations(watch) == opened[0] == 3
        assert queries(watch, "SELECT", "none") == 3
    finally:
        engine.dispose()


def test_static_pool_has_one_connection(watch: PoolWatch) -> None:
    engine = create_engine("sqlite://", poolclass=StaticPool)
    try:
        watch.instrument_sqlalchemy(engine, pool=POOL)
        assert (used(watch), idle(watch)) == (0, 0)
        assert sample(watch, "db_client_connection_max") == 1
        with engine.connect() as conn:
            conn.execute(text("SELECT 1")).all()
            assert (used(watch), idle(watch)) == (1, 0)
        assert (used(watch), idle(watch), pending(watch)) == (0, 1, 0)
        assert own_checkouts(watch) == 0
        assert creations(watch) == 1
        assert queries(watch, "SELECT", "none") == 1
    finally:
        engine.dispose()


def test_singleton_thread_pool_has_one_connection_per_thread(watch: PoolWatch) -> None:
    engine = create_engine("sqlite://")  # SQLite in memory: SingletonThreadPool
    try:
        watch.instrument_sqlalchemy(engine, pool=POOL)
        holding, done = threading.Barrier(2), threading.Event()

        def hold() -> None:
            with engine.connect() as conn:
                conn.execute(text("SELECT 1")).all()
                holding.wait()
                done.wait(5)

        thread = threading.Thread(target=hold)
        thread.start()
        holding.wait()
        with engine.connect() as first, engine.connect() as second:  # the same connection
            first.execute(text("SELECT 1")).all()
            second.execute(text("SELECT 1")).all()
            assert (used(watch), idle(watch)) == (2, 0)
        done.set()
        thread.join()
        assert (used(watch), idle(watch), pending(watch)) == (0, 2, 0)
        assert own_checkouts(watch) == 0
        assert waits(watch) == 3
        assert queries(watch, "SELECT", "none") == 3
    finally:
        engine.dispose()


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
    assert timeouts(watch) == outcomes["timeout"]
    assert errors(watch, "SELECT", "none") == outcomes["error"]
    assert_at_rest(watch, engine.sync_engine.pool)


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


# -- the dialect's own statements are never findings ---------------------------------------


async def test_first_connect_probes_of_two_fresh_engines_are_no_findings(
    sync_url: str, async_url: str
) -> None:
    # Engines instrumented before their first connect: the dialect's probes (server version,
    # schema, isolation level, standard_conforming_strings) run inside the scope, on two
    # pools, the same statements twice. They are bookkeeping, not the app's reads.
    engines = [create_engine(sync_url), create_engine(sync_url)]
    async_engine = create_async_engine(async_url)
    watch = PoolWatch(nplusone_threshold=2, duplicate_threshold=2)
    for i, engine in enumerate(engines):
        watch.instrument_sqlalchemy(engine, pool=f"sync{i}")
    watch.instrument_sqlalchemy(async_engine, pool="async")
    try:
        with capture() as captured, poolwatch.scope("startup"):
            for engine in engines:
                with engine.connect() as conn:
                    conn.execute(text("SELECT 1"))
            async with async_engine.connect() as aconn:
                await aconn.execute(text("SELECT 1"))
    finally:
        watch.uninstrument()
        for engine in engines:
            engine.dispose()
        await async_engine.dispose()
    assert watch.findings() == []
    assert captured.findings == []
    assert captured.queries == [], captured.report()


def test_an_engines_statements_are_read_in_its_dialect(
    watch: PoolWatch, make_engine: Callable[..., Engine]
) -> None:
    engine = make_engine()
    watch.instrument_sqlalchemy(engine, pool="main")
    assert engine.dialect.name in ("sqlite", "postgresql")
    assert watch.pool_events("main").dialect == engine.dialect.name
