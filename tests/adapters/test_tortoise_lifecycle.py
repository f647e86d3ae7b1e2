"""Tortoise-ORM initialised per test: one PoolWatch, ``Tortoise.init`` and
``Tortoise.close_connections()`` around each test, as public apps' conftests do. A closed
connection's pool leaves no gauges; the next init counts on under the same name."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from tortoise import Tortoise, connections
from tortoise.backends.base.executor import EXECUTOR_CACHE

from poolwatch import PoolWatch
from tests.metrics_helpers import value
from tests.tortoise_models import IGNORE_OLD_PSYCOPG_CLIENT

pytestmark = IGNORE_OLD_PSYCOPG_CLIENT


def _url(request: pytest.FixtureRequest, backend: str, tmp_path: Path) -> str:
    if backend == "sqlite":
        return f"sqlite://{tmp_path / 'app.db'}"
    dsn = request.getfixturevalue("pg_database")
    return f"{backend}://" + dsn.split("://", 1)[1] + "?minsize=1&maxsize=4"


def _gauges(watch: PoolWatch) -> dict[str, float | None]:
    get = watch.registry.get_sample_value
    return {
        "used": get("db_client_connection_count", {"pool": "default", "state": "used"}),
        "idle": get("db_client_connection_count", {"pool": "default", "state": "idle"}),
        "max": get("db_client_connection_max", {"pool": "default"}),
    }


@pytest.mark.parametrize(
    "backend",
    [
        "sqlite",
        pytest.param("asyncpg", marks=pytest.mark.postgres),
        pytest.param("psycopg", marks=pytest.mark.postgres),
    ],
)
async def test_each_tests_connections_count_on_and_closing_leaves_no_gauges(
    backend: str, request: pytest.FixtureRequest, tmp_path: Path, make_watch: Any
) -> None:
    watch = make_watch()
    watch.instrument_tortoise()
    url = _url(request, backend, tmp_path)
    for run in range(1, 4):
        EXECUTOR_CACHE.clear()
        await Tortoise.init(db_url=url, modules={"models": ["tests.tortoise_models"]})
        try:
            await connections.get("default").execute_query("SELECT 1")
            gauges = _gauges(watch)
            assert gauges["used"] == 0
            assert (gauges["idle"] or 0) >= 1
        finally:
            await Tortoise.close_connections()
        # Closed: no pool, no gauges (none stays behind at a stale count).
        assert _gauges(watch) == {"used": None, "idle": None, "max": None}
        assert value(watch.registry, "db_client_operation_duration_seconds_count",
                     pool="default", operation="SELECT", route="none") == run  # fmt: skip
