"""Sync engines: gauges, statements by route, errors, timeouts, threads, dispose,
uninstrument, and faults that never reach the app."""

from __future__ import annotations

import asyncio
import contextvars
import gc
import logging
import sqlite3
import threading
import weakref
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy.exc
from prometheus_client import generate_latest
from sqlalchemy import (
    Engine,
    Table,
    bindparam,
    create_engine,
    event,
    insert,
    select,
    text,
    update,
)
from sqlalchemy.ext.asyncio import AsyncEngine
from sqlalchemy.pool import QueuePool

import poolwatch
from poolwatch import ConfigError, PoolWatch, PoolWatchError
from poolwatch.adapters.sqlalchemy import SQLAlchemyInstrumentation
from poolwatch.adapters.sqlalchemy import instrumentation as adapter
from poolwatch.adapters.sqlalchemy import pool as sqlalchemy_pool
from poolwatch.pools import observer as pool_observer
from poolwatch.safety import FaultReporter
from tests.adapters.sqlalchemy.readings import (
    POOL,
    SEED_ROWS,
    assert_at_rest,
    count_connects,
    creations,
    errors,
    idle,
    pending,
    queries,
    sample,
    timeouts,
    used,
    waits,
)

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


def test_a_connection_checked_in_is_returning_until_the_pool_has_it_back(
    watch: PoolWatch,
    make_engine: Callable[..., Engine],
    table: Table,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # SQLAlchemy's checkin event comes before the pool takes the connection back (and
    # closes an overflow one). Read in between, as a scrape may and as multiprocess mode
    # writes the gauges at every release, the pool still counting it is no drift; once
    # the pool has it, poolwatch hears so (multiprocess mode writes the gauges again).
    engine = make_engine(pool_size=1, max_overflow=1)
    watch.instrument_sqlalchemy(engine, pool=POOL)
    pool = engine.pool
    assert isinstance(pool, QueuePool)
    observer = watch.pool_events(POOL)
    between: list[tuple[float, float, int]] = []
    back: list[tuple[int, int]] = []

    @event.listens_for(pool, "checkin")
    def read_between(*_: Any) -> None:  # runs after poolwatch's own checkin listener
        between.append((used(watch), sample(watch, "poolwatch_pool_drift"), observer.returning))

    finished = observer.return_finished

    def return_finished() -> None:
        back.append((pool.checkedout(), pool.checkedin()))
        finished()

    monkeypatch.setattr(observer, "return_finished", return_finished)

    held = [engine.connect() for _ in range(2)]  # the pool's one and an overflow one
    for conn in held:
        conn.execute(select(table).where(table.c.id == 1)).all()
    for conn in held:
        conn.close()

    assert between == [(2, 0, 1), (1, 0, 1)]
    assert back == [(1, 1), (0, 1)]  # the first one queued, the overflow one closed
    assert observer.returning == 0
    assert_at_rest(watch, pool)


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


def test_creation_time_is_reported_apart_from_wait_time(
    watch: PoolWatch, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "slow.db"
    # The clock that times acquires and connects moves only while the server connects:
    # an acquire's whole time is then its connect's, exactly, however busy the machine,
    # and a wait that kept the connect in it would be that long. (On the real clock the
    # rest of an acquire has no upper bound on a loaded machine, and no bound on the wait
    # could tell the connect's time in it from a slow acquire's own.)
    now = [0.0]
    monkeypatch.setattr(sqlalchemy_pool, "perf_counter", lambda: now[0])
    monkeypatch.setattr(pool_observer, "perf_counter", lambda: now[0])

    def slow_connect() -> sqlite3.Connection:
        now[0] += 0.05  # a far-away server
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
        assert sample(watch, "db_client_connection_create_time_seconds_sum") == 0.05
        assert waits(watch) == 3
        assert sample(watch, "db_client_connection_wait_time_seconds_sum") == 0.0
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
