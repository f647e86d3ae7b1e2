"""Reading a PoolWatch's metrics and a SQLAlchemy pool's own counts, for the tests
beside this module."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

from sqlalchemy import Engine, event, make_url
from sqlalchemy.ext.asyncio import AsyncEngine
from sqlalchemy.pool import Pool, QueuePool

from poolwatch import PoolWatch
from poolwatch.pools.observer import PoolObserver

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


def pg_url(dsn: str, driver: str) -> str:
    return make_url(dsn).set(drivername=f"postgresql+{driver}").render_as_string(False)
