"""Engines and apps that live as long as a test: one PoolWatch, a new engine (or the same
module-level one) and a new app per test, as public apps' conftests build them.

A disposed or garbage-collected engine hands its pool name on and leaves no gauges; the
same engine instrumented again changes nothing; over a thousand such tests the series
and the memory stay flat.
"""

from __future__ import annotations

import gc
import tracemalloc
import weakref
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi import FastAPI, Request
from sqlalchemy import Engine, create_engine, text
from sqlalchemy.pool import QueuePool

from poolwatch import Autosize, ConfigError, PoolWatch
from tests.metrics_helpers import value

POOL = "main"


@pytest.fixture
def watch() -> Iterator[PoolWatch]:
    """One PoolWatch for the whole 'suite', as an app's module-level one."""
    made = PoolWatch()
    yield made
    made.uninstrument()


def _engine(tmp_path: Path) -> Engine:
    return create_engine(
        f"sqlite:///{tmp_path / 'app.db'}", poolclass=QueuePool, pool_size=3, max_overflow=0
    )


def _query(engine: Engine) -> None:
    with engine.connect() as connection:
        connection.execute(text("SELECT 1")).all()


def _gauges(watch: PoolWatch) -> dict[str, float | None]:
    get = watch.registry.get_sample_value
    return {
        "used": get("db_client_connection_count", {"pool": POOL, "state": "used"}),
        "idle": get("db_client_connection_count", {"pool": POOL, "state": "idle"}),
        "max": get("db_client_connection_max", {"pool": POOL}),
    }


def test_an_engine_per_test_under_one_name_takes_the_name_over(
    watch: PoolWatch, tmp_path: Path
) -> None:
    for run in range(1, 4):
        engine = _engine(tmp_path)
        watch.instrument_sqlalchemy(engine, pool=POOL)  # raised "already instrumented"
        _query(engine)
        assert _gauges(watch) == {"used": 0, "idle": 1, "max": 3}
        # One series for the name, counting on across the engines.
        assert value(watch.registry, "db_client_operation_duration_seconds_count",
                     pool=POOL, operation="SELECT", route="none") == run  # fmt: skip
        engine.dispose()
        # A disposed engine's pool has no gauges: none piles up, none shows a stale 0.
        assert _gauges(watch) == {"used": None, "idle": None, "max": None}


def test_the_name_of_an_engine_still_in_use_is_refused_to_another(
    watch: PoolWatch, tmp_path: Path
) -> None:
    first = _engine(tmp_path)
    watch.instrument_sqlalchemy(first, pool=POOL)
    _query(first)
    second = _engine(tmp_path)
    with pytest.raises(ConfigError) as refused:
        watch.instrument_sqlalchemy(second, pool=POOL)
    assert str(refused.value).startswith("pool='main': is the name of another engine still in use")
    assert "disposed, or garbage-collected, hands its name on" in str(refused.value)
    _query(first)  # the first engine is still watched
    assert value(watch.registry, "db_client_operation_duration_seconds_count",
                 pool=POOL, operation="SELECT", route="none") == 2  # fmt: skip
    first.dispose()
    second.dispose()


def test_an_app_factory_instrumenting_a_module_level_engine_again_changes_nothing(
    watch: PoolWatch, tmp_path: Path
) -> None:
    engine = _engine(tmp_path)
    for _ in range(3):  # create_app() per test, the engine made once at import
        watch.instrument_sqlalchemy(engine, pool=POOL)
    _query(engine)
    assert value(watch.registry, "db_client_operation_duration_seconds_count",
                 pool=POOL, operation="SELECT", route="none") == 1  # counted once  # fmt: skip
    with pytest.raises(ConfigError) as refused:
        watch.instrument_sqlalchemy(engine, pool=POOL, autosize=Autosize(min=1))
    assert refused.value.setting == "autosize"
    engine.dispose()


def test_a_disposed_engine_used_again_has_its_gauges_back(watch: PoolWatch, tmp_path: Path) -> None:
    engine = _engine(tmp_path)
    watch.instrument_sqlalchemy(engine, pool=POOL)
    _query(engine)
    engine.dispose()
    assert _gauges(watch)["max"] is None
    _query(engine)  # SQLAlchemy lets a disposed engine serve on, with a new pool
    assert _gauges(watch) == {"used": 0, "idle": 1, "max": 3}
    engine.dispose()


def test_an_engine_the_app_let_go_hands_its_name_on_and_leaves_no_gauges(
    watch: PoolWatch, tmp_path: Path
) -> None:
    engine = _engine(tmp_path)
    watch.instrument_sqlalchemy(engine, pool=POOL)
    _query(engine)
    assert _gauges(watch)["idle"] == 1
    del engine  # never disposed: a test that forgot to
    gc.collect()
    assert _gauges(watch) == {"used": None, "idle": None, "max": None}
    successor = _engine(tmp_path)
    watch.instrument_sqlalchemy(successor, pool=POOL)
    _query(successor)
    assert _gauges(watch)["idle"] == 1
    successor.dispose()


def _item(item_id: int, request: Request) -> dict[str, Any]:
    with request.app.state.engine.connect() as connection:
        return {"id": connection.execute(text("SELECT :i"), {"i": item_id}).scalar()}


def _cycle(watch: PoolWatch, tmp_path: Path, made: weakref.WeakSet[object]) -> None:
    """One 'test': an engine and an app made for it, one request, both let go."""
    engine = _engine(tmp_path)
    made.add(engine)
    watch.instrument_sqlalchemy(engine, pool=POOL)
    app = FastAPI()
    made.add(app)
    # The engine reached through the app, as a dependency would: FastAPI caches endpoint
    # functions process-wide, and one closing over the engine would keep it (FastAPI's
    # doing, not what this test measures).
    app.state.engine = engine
    app.get("/items/{item_id}")(_item)
    watch.instrument_app(app)
    transport = httpx.ASGITransport(app=app)

    async def request() -> int:
        async with httpx.AsyncClient(transport=transport, base_url="http://app") as client:
            return (await client.get("/items/7")).status_code

    import asyncio

    assert asyncio.run(request()) == 200
    engine.dispose()


def _series(watch: PoolWatch) -> int:
    return sum(len(family.samples) for family in watch.registry.collect())


def test_a_thousand_tests_with_their_own_engine_and_app_keep_series_and_memory_flat(
    watch: PoolWatch, tmp_path: Path
) -> None:
    # Only this test's engines and apps are counted: earlier tests' may still be alive.
    made: weakref.WeakSet[object] = weakref.WeakSet()
    for _ in range(50):  # the first ones make every series and warm every cache
        _cycle(watch, tmp_path, made)
    gc.collect()
    series = _series(watch)
    tracemalloc.start()
    try:
        for _ in range(50):
            _cycle(watch, tmp_path, made)
        gc.collect()
        before, _ = tracemalloc.get_traced_memory()
        for _ in range(950):
            _cycle(watch, tmp_path, made)
        gc.collect()
        after, _ = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert _series(watch) == series
    # A kept engine and app per test is hundreds of kilobytes each; 950 of them would be
    # hundreds of megabytes. Allocator noise stays far under this.
    assert after - before < 2_000_000, (before, after)
    # At most the last test's engine and app are still referenced (by what ran it last).
    assert sum(isinstance(o, Engine) for o in made) <= 1, list(made)
    assert sum(isinstance(o, FastAPI) for o in made) <= 1, list(made)
