"""Autosize wired the ways apps wire it: at import, before any event loop runs; from
worker threads; across one loop after another; in a forked child.

The truth is the app's own outcome (no transaction of its own fails), the server's
``pg_stat_activity`` and the driver's pool. Every wait is on a condition (the limit grew,
the budget was read), capped far above what it takes on an idle machine, never a sleep
that a busy machine could outrun.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import multiprocessing
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import psycopg
import pytest
from psycopg import sql

from poolwatch import Autosize, PoolTimeoutError, PoolWatch
from tests.metrics_helpers import value

CAP = 60.0  # seconds: a bound on every wait below, reached only when something is wrong


def _wait_until(condition: Callable[[], bool], what: str) -> None:
    deadline = time.monotonic() + CAP
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: not within {CAP:.0f} s")
        time.sleep(0.02)


@pytest.fixture
def role_of_eight(pg_database: str) -> Iterator[str]:
    """``user@host:port/db`` of a role allowed 8 connections, owning a small table."""
    name = f"poolwatch_eight_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(pg_database, autocommit=True) as admin:
        admin.execute(
            sql.SQL("CREATE ROLE {} LOGIN CONNECTION LIMIT 8").format(sql.Identifier(name))
        )
        admin.execute(
            "CREATE TABLE counter (id int PRIMARY KEY, n int NOT NULL);"
            "INSERT INTO counter SELECT g, 0 FROM generate_series(1, 100) AS g"
        )
        admin.execute(sql.SQL("GRANT ALL ON counter TO {}").format(sql.Identifier(name)))
    rest = pg_database.split("://", 1)[1].split("@", 1)[1]
    try:
        yield f"{name}@{rest}"
    finally:
        with psycopg.connect(pg_database, autocommit=True) as admin:
            admin.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE usename = %s",
                (name,),
            )
            admin.execute(sql.SQL("DROP OWNED BY {}").format(sql.Identifier(name)))
            admin.execute(sql.SQL("DROP ROLE IF EXISTS {}").format(sql.Identifier(name)))


class _Sessions:
    """The most sessions a role had open at once, from an admin connection's view."""

    def __init__(self, admin_dsn: str, role: str) -> None:
        self.peak = 0
        self._dsn, self._role = admin_dsn, role
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> _Sessions:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join(10)

    def _run(self) -> None:
        with psycopg.connect(self._dsn, autocommit=True) as admin:
            while not self._stop.wait(0.02):
                row = admin.execute(
                    "SELECT count(*) FROM pg_stat_activity WHERE usename = %s", (self._role,)
                ).fetchone()
                self.peak = max(self.peak, int(row[0]) if row else 0)


def _faults(watch: PoolWatch) -> float:
    return sum(
        value(watch.registry, "poolwatch_internal_errors_total", component=component)
        for component in ("autosize", "budget", "pool", "sqlalchemy", "query")
    )


@pytest.mark.parametrize("driver", ["asyncpg", "psycopg"])
def test_an_async_engine_instrumented_at_import_reads_its_budget_on_the_apps_loop(
    pg_database: str, role_of_eight: str, driver: str
) -> None:
    # As most apps do: the engine and poolwatch made at module level, before uvicorn's
    # loop runs. The budget read must use the app's loop, or it breaks the app's own
    # transactions on the connections it touches (and fails, and autosize flies blind).
    from sqlalchemy import text
    from sqlalchemy.ext.asyncio import create_async_engine

    role = role_of_eight.split("@", 1)[0]
    engine = create_async_engine(
        f"postgresql+{driver}://{role_of_eight}", pool_size=30, max_overflow=0
    )
    watch = PoolWatch(acquire_timeout=5)
    watch.instrument_sqlalchemy(engine, pool="main", autosize=Autosize(min=2))
    sizer = watch.guards.sizers["main"]
    errors: collections.Counter[str] = collections.Counter()
    done = 0
    peak_limit = 0

    async def app() -> None:
        nonlocal done, peak_limit
        grown = asyncio.Event()

        async def worker(index: int) -> None:
            nonlocal done, peak_limit
            count = 0
            while count < 20 or not grown.is_set():
                try:
                    async with engine.begin() as connection:
                        await connection.execute(text("SELECT n FROM counter WHERE id = 1"))
                        await connection.execute(
                            text("UPDATE counter SET n = n + 1 WHERE id = :id"),
                            {"id": index % 100 + 1},
                        )
                    done += 1
                    count += 1
                except Exception as exc:
                    errors[f"{type(exc).__name__}: {exc}"[:160]] += 1
                peak_limit = max(peak_limit, sizer.limiter.limit)
                if sizer.budget is not None and sizer.limiter.limit > 2:
                    grown.set()

        async def cap() -> None:
            await asyncio.sleep(CAP)
            grown.set()

        capping = asyncio.create_task(cap())
        await asyncio.gather(*(worker(i) for i in range(60)))
        capping.cancel()
        await engine.dispose()

    try:
        with _Sessions(pg_database, role) as sessions:
            asyncio.run(app())
    finally:
        watch.uninstrument()
    assert not errors, errors.most_common(5)
    assert sizer.budget is not None, "the budget was never read"
    assert sizer.budget.peers == 1, sizer.budget
    assert 2 < peak_limit <= 8 - 2, peak_limit  # grew, within the role's 8 less its headroom
    assert sessions.peak <= 8
    assert value(watch.registry, "poolwatch_autosize_budget_read_errors_total", pool="main") == 0
    assert _faults(watch) == 0


def test_a_sync_engine_grows_when_threads_queue_and_serves_them_in_order(
    pg_database: str,
) -> None:
    # 40 threads on a pool limited to 2 at start, each transaction ~20 ms: the budget is
    # read first in the queue, the limit grows, and no thread waits out its timeout.
    from sqlalchemy import create_engine, text

    engine = create_engine(
        "postgresql+psycopg://" + pg_database.split("://", 1)[1], pool_size=30, max_overflow=0
    )
    watch = PoolWatch(acquire_timeout=5)
    watch.instrument_sqlalchemy(engine, pool="main", autosize=Autosize(min=2))
    sizer = watch.guards.sizers["main"]
    grown = threading.Event()
    timeouts: list[PoolTimeoutError] = []
    done = collections.Counter[int]()

    def worker(index: int) -> None:
        deadline = time.monotonic() + CAP
        while (done[index] < 10 or not grown.is_set()) and time.monotonic() < deadline:
            try:
                with engine.begin() as connection:
                    connection.execute(text("SELECT pg_sleep(0.02)"))
                done[index] += 1
            except PoolTimeoutError as exc:
                timeouts.append(exc)
            if sizer.budget is not None and sizer.limiter.limit > 2:
                grown.set()

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(40)]
    try:
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
    finally:
        watch.uninstrument()
        engine.dispose()
    assert grown.is_set(), f"the limit stayed at {sizer.limiter.limit}"
    assert not timeouts, [str(t) for t in timeouts[:3]]
    assert all(done[i] >= 10 for i in range(40)), done
    assert _faults(watch) == 0


def test_the_controller_runs_again_on_the_next_loop_after_a_lifespan_stopped_it(
    pg_database: str,
) -> None:
    # A test suite's loop per test, an app per test: the lifespan shutdown of one stops
    # the controller, and the next loop's first acquire starts it again, its budget read
    # on that loop.
    from sqlalchemy import text
    from sqlalchemy.ext.asyncio import create_async_engine

    url = "postgresql+asyncpg://" + pg_database.split("://", 1)[1]
    engine = create_async_engine(url, pool_size=10, max_overflow=0)
    watch = PoolWatch()
    watch.instrument_sqlalchemy(engine, pool="main", autosize=Autosize(min=2, budget_interval=0.5))
    sizer = watch.guards.sizers["main"]
    maintenance = watch.guards.maintenance

    async def one_loop() -> asyncio.AbstractEventLoop:
        async with engine.connect() as connection:
            await connection.execute(text("SELECT 1"))
        read_before = sizer.budget_read_at
        deadline = time.monotonic() + CAP
        # Set from poolwatch's own thread, so no event of this loop's to await; the read
        # itself needs this loop to run, so it is polled here, not from a thread.
        while sizer.budget_read_at == read_before and time.monotonic() < deadline:  # noqa: ASYNC110
            await asyncio.sleep(0.02)
        await maintenance.stop()  # as the app's lifespan shutdown does
        await engine.dispose()
        assert sizer.budget_read_at != read_before, "no budget read on this loop"
        return asyncio.get_running_loop()

    try:
        first = asyncio.run(one_loop())
        assert not maintenance.running
        second = asyncio.run(one_loop())
    finally:
        watch.uninstrument()
    assert first is not second
    assert value(watch.registry, "poolwatch_autosize_budget_read_errors_total", pool="main") == 0
    assert _faults(watch) == 0


def test_a_permit_held_by_nobody_shows_in_a_metric(make_watch: Any) -> None:
    from sqlalchemy import create_engine, text
    from sqlalchemy.pool import QueuePool

    engine = create_engine("sqlite://", poolclass=QueuePool, pool_size=5, max_overflow=0)
    watch = make_watch()
    watch.instrument_sqlalchemy(engine, autosize=Autosize(min=3, budget=5))
    sizer = watch.guards.sizers["main"]
    started = value(
        watch.registry, "poolwatch_autosize_last_decision_timestamp_seconds", pool="main"
    )
    with engine.connect() as connection:  # an honest checkout is no orphan
        connection.execute(text("SELECT 1"))
        _wait_until(
            lambda: (
                value(
                    watch.registry,
                    "poolwatch_autosize_last_decision_timestamp_seconds",
                    pool="main",
                )
                > started
            ),
            "the controller decided",
        )
        assert sizer.limiter.acquire(timeout=1)  # a permit nobody will give back
        _wait_until(lambda: sizer.orphaned == 1, "the orphaned permit was seen")
        assert value(watch.registry, "poolwatch_autosize_orphaned_permits", pool="main") == 1
    sizer.limiter.release()
    _wait_until(lambda: sizer.orphaned == 0, "the permit's return was seen")
    assert value(watch.registry, "poolwatch_autosize_orphaned_permits", pool="main") == 0
    engine.dispose()


def _child_after_fork(engine: Any, watch: PoolWatch, out: Any) -> None:
    from sqlalchemy import text

    engine.dispose(close=False)  # SQLAlchemy's recipe for a forked child
    with engine.connect() as connection:
        connection.execute(text("SELECT 1"))
    sizer = watch.guards.sizers["main"]
    out.send(
        {
            "drift": value(watch.registry, "poolwatch_pool_drift", pool="main"),
            "used": value(watch.registry, "db_client_connection_count", pool="main", state="used"),
            "permits": sizer.limiter.in_use,
            "running": watch.guards.maintenance.running,
        }
    )


def test_a_forked_child_counts_none_of_its_parents_checkouts(tmp_path: Any) -> None:
    from sqlalchemy import create_engine, text

    engine = create_engine(
        f"sqlite:///{tmp_path / 'db.sqlite'}", pool_size=5, max_overflow=0, poolclass=None
    )
    watch = PoolWatch()
    watch.instrument_sqlalchemy(engine, pool="main", autosize=Autosize(min=2, budget=5))
    context = multiprocessing.get_context("fork")
    receiving, sending = context.Pipe(duplex=False)
    try:
        with engine.connect() as held:  # out in the parent while it forks
            held.execute(text("SELECT 1"))
            child = context.Process(target=_child_after_fork, args=(engine, watch, sending))
            child.start()
            with contextlib.closing(receiving):
                assert receiving.poll(CAP), "the child sent nothing"
                seen = receiving.recv()
            child.join(CAP)
        assert child.exitcode == 0
    finally:
        watch.uninstrument()
        engine.dispose()
    assert seen == {"drift": 0, "used": 0, "permits": 0, "running": True}


def test_uninstrument_retires_the_gauges_of_a_controller_now_gone() -> None:
    # Left behind, a last-decision timestamp that no longer moves would page someone
    # with PoolwatchAutosizeStalled for a pool nobody sizes any more.
    from sqlalchemy import create_engine
    from sqlalchemy.pool import QueuePool

    engine = create_engine("sqlite://", poolclass=QueuePool, pool_size=5, max_overflow=0)
    watch = PoolWatch()
    watch.instrument_sqlalchemy(engine, autosize=Autosize(min=2, budget=5))
    gauges = (
        "poolwatch_autosize_last_decision_timestamp_seconds",
        "poolwatch_autosize_orphaned_permits",
        "poolwatch_pool_limit_target",
        "poolwatch_pool_limit_max",
    )
    assert all(
        watch.registry.get_sample_value(name, {"pool": "main"}) is not None for name in gauges
    )
    watch.uninstrument()
    left = [n for n in gauges if watch.registry.get_sample_value(n, {"pool": "main"}) is not None]
    assert left == []
    engine.dispose()


def test_the_budget_counts_only_connections_the_server_can_show() -> None:
    # A QueuePool counts a connection as checked out from the moment it starts opening
    # it; pg_stat_activity shows it only once open. Counted as held meanwhile, a pool
    # growing fast looked as if the server missed its tagged sessions.
    import sqlite3

    from sqlalchemy import create_engine, text
    from sqlalchemy.pool import QueuePool

    opening, go_on = threading.Event(), threading.Event()

    def slow_connect() -> sqlite3.Connection:
        opening.set()
        assert go_on.wait(CAP)
        return sqlite3.connect(":memory:", check_same_thread=False)

    engine = create_engine(
        "sqlite://", creator=slow_connect, poolclass=QueuePool, pool_size=4, max_overflow=0
    )
    watch = PoolWatch()
    watch.instrument_sqlalchemy(engine, autosize=Autosize(min=2, budget=4))
    open_connections = watch.guards.sizers["main"].open_connections

    def use() -> None:
        with engine.connect() as connection:
            connection.execute(text("SELECT 1"))

    thread = threading.Thread(target=use)
    try:
        thread.start()
        assert opening.wait(CAP)
        assert engine.pool.checkedout() == 1  # the pool's own count includes it
        assert open_connections() == 0
        go_on.set()
        thread.join(CAP)
        assert open_connections() == 1  # open now, back in the pool
    finally:
        go_on.set()
        watch.uninstrument()
        engine.dispose()
