"""Explicit wins: what ``poolwatch run`` instruments (``automatic=True``) gives way to the
app's own ``instrument_sqlalchemy`` / ``instrument_tortoise``, of the same PoolWatch or
another, and every statement is counted once, by the one that took over."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Engine, create_engine, text
from tortoise import Tortoise, connections
from tortoise.backends.base.executor import EXECUTOR_CACHE

from poolwatch import Autosize, PoolWatch, PoolWatchError
from tests.metrics_helpers import value


def _selects(watch: PoolWatch, pool: str) -> float:
    return value(watch.registry, "db_client_operation_duration_seconds_count",
                 pool=pool, operation="SELECT", route="none") or 0.0  # fmt: skip


def _idle(watch: PoolWatch, pool: str) -> float | None:
    return watch.registry.get_sample_value(
        "db_client_connection_count", {"pool": pool, "state": "idle"}
    )


@pytest.fixture
def engine(tmp_path: Path) -> Iterator[Engine]:
    made = create_engine(f"sqlite:///{tmp_path / 'shop.db'}", pool_size=2, max_overflow=1)
    with made.connect() as conn:  # the dialect's own first statements, before any count
        conn.execute(text("SELECT 1"))
    yield made
    made.dispose()


def _select(engine: Engine) -> None:
    with engine.connect() as conn:
        conn.execute(text("SELECT 1"))


def test_an_explicit_call_takes_over_from_an_automatic_one(engine: Engine, make_watch: Any) -> None:
    automatic, explicit = make_watch(), make_watch()
    automatic.instrument_sqlalchemy(engine, pool="shop", automatic=True)
    _select(engine)
    assert _selects(automatic, "shop") == 1

    explicit.instrument_sqlalchemy(engine, pool="main")  # raised "already instrumented"
    _select(engine)
    _select(engine)
    assert _selects(explicit, "main") == 2
    assert _selects(automatic, "shop") == 1  # counted once, by the one that took over
    assert _idle(explicit, "main") == 1
    assert _idle(automatic, "shop") is None  # it reads the pool no more
    automatic.uninstrument()  # undoes nothing of the explicit one
    _select(engine)
    assert _selects(explicit, "main") == 3


def test_the_same_watch_takes_its_automatic_engine_over(engine: Engine, make_watch: Any) -> None:
    watch = make_watch()
    watch.instrument_sqlalchemy(engine, pool="shop", automatic=True)
    watch.instrument_sqlalchemy(engine, pool="main")
    _select(engine)
    assert (_selects(watch, "shop"), _selects(watch, "main")) == (0, 1)
    assert _idle(watch, "shop") is None
    assert _idle(watch, "main") == 1


def test_the_same_name_asked_again_with_autosize_is_instrumented_again(
    engine: Engine, make_watch: Any
) -> None:
    watch = make_watch()
    watch.instrument_sqlalchemy(engine, pool="main", automatic=True)
    # Explicitly, with settings: not "differs from what it was instrumented with".
    watch.instrument_sqlalchemy(engine, pool="main", autosize=Autosize(min=1))
    _select(engine)
    assert _selects(watch, "main") == 1
    assert watch._engines["main"].sizing == Autosize(min=1)


def test_an_automatic_call_leaves_an_instrumented_engine_alone(
    engine: Engine, make_watch: Any
) -> None:
    explicit, automatic, late = make_watch(), make_watch(), make_watch()
    explicit.instrument_sqlalchemy(engine, pool="main")
    automatic.instrument_sqlalchemy(engine, pool="shop", automatic=True)
    _select(engine)
    assert _selects(explicit, "main") == 1
    # No series at all for a pool it left alone.
    assert "shop" not in automatic._observers
    assert 'pool="shop"' not in _exposition(automatic)
    # Automatic after automatic: the first stays.
    other = create_engine(str(engine.url))
    try:
        automatic.instrument_sqlalchemy(other, pool="shop", automatic=True)
        late.instrument_sqlalchemy(other, pool="shop", automatic=True)
        _select(other)
        assert (_selects(automatic, "shop"), _selects(late, "shop")) == (1, 0)
    finally:
        other.dispose()


def test_two_explicit_calls_still_refuse_each_other(engine: Engine, make_watch: Any) -> None:
    make_watch().instrument_sqlalchemy(engine, pool="main")
    with pytest.raises(PoolWatchError, match="already instrumented"):
        make_watch().instrument_sqlalchemy(engine, pool="main")


def _exposition(watch: PoolWatch) -> str:
    from prometheus_client import generate_latest

    return generate_latest(watch.registry).decode()


async def test_tortoise_explicit_takes_over_from_automatic(tmp_path: Path, make_watch: Any) -> None:
    automatic, explicit = make_watch(), make_watch()
    automatic.instrument_tortoise(automatic=True)
    automatic.instrument_tortoise(automatic=True)  # Tortoise initialised again: once
    EXECUTOR_CACHE.clear()
    await Tortoise.init(
        db_url=f"sqlite://{tmp_path / 'app.db'}", modules={"models": ["tests.tortoise_models"]}
    )
    try:
        client = connections.get("default")
        await client.execute_query("SELECT 1")
        assert _selects(automatic, "default") == 1

        explicit.instrument_tortoise()  # raised "already instrumented by another PoolWatch"
        await client.execute_query("SELECT 1")
        await client.execute_query("SELECT 1")
        assert _selects(explicit, "default") == 2
        assert _selects(automatic, "default") == 1
        assert _idle(automatic, "default") is None  # it reads the pool no more
        assert _idle(explicit, "default") == 1
        # Now explicit: an automatic call of anyone changes nothing.
        make_watch().instrument_tortoise(automatic=True)
        await client.execute_query("SELECT 1")
        assert _selects(explicit, "default") == 3
        # Two explicit ones still refuse each other.
        with pytest.raises(PoolWatchError, match="already instrumented"):
            make_watch().instrument_tortoise()
    finally:
        await Tortoise.close_connections()
