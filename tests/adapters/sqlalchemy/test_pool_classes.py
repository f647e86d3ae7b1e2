"""The pool classes besides QueuePool: NullPool, StaticPool, SingletonThreadPool."""

from __future__ import annotations

import threading
from pathlib import Path

from sqlalchemy import create_engine, text
from sqlalchemy.pool import NullPool, StaticPool

from poolwatch import PoolWatch
from tests.adapters.sqlalchemy.readings import (
    POOL,
    count_connects,
    creations,
    idle,
    own_checkouts,
    pending,
    queries,
    sample,
    used,
    waits,
)

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
