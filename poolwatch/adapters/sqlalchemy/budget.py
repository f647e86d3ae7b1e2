"""What autosize's database budget (:mod:`poolwatch.sizing.budget`) needs from an engine:
a reader of the server's connection limits, and the pool's tag at the end of each new
connection's ``application_name`` (see :mod:`poolwatch.sizing.appname`), by which the budget
counts how many pools share the database and what each holds.
"""

from __future__ import annotations

import weakref
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from sqlalchemy.engine import Engine

from poolwatch.errors import PoolWatchError
from poolwatch.sizing.appname import tag_server_settings, tagged_name
from poolwatch.sizing.budget import POSTGRES_LIMITS_SQL, ServerLimits

if TYPE_CHECKING:
    from sqlalchemy.ext.asyncio import AsyncEngine

__all__ = ["postgres_limits_reader", "tag_parameters", "taggable"]


def postgres_limits_reader(
    engine: Engine | AsyncEngine,
) -> Callable[[], Any] | None:
    """A reader of the server's connection limits, for engines on PostgreSQL."""
    sync_engine = engine if isinstance(engine, Engine) else engine.sync_engine
    if sync_engine.dialect.name != "postgresql":
        return None
    from sqlalchemy import text

    # Weakly, like the instrumentation: the reader lives as long as autosize's sizer, and
    # must not keep alive an engine the app let go.
    if not isinstance(engine, Engine):
        async_ref = weakref.ref(engine)

        async def read_async() -> ServerLimits:
            async_engine = async_ref()
            if async_engine is None:
                raise PoolWatchError("the engine is gone")
            async with async_engine.connect() as connection:
                row = (await connection.execute(text(POSTGRES_LIMITS_SQL))).one()
            return ServerLimits.from_row(tuple(row))

        return read_async

    sync_ref = weakref.ref(sync_engine)

    def read_sync() -> ServerLimits:
        current = sync_ref()
        if current is None:
            raise PoolWatchError("the engine is gone")
        with current.connect() as connection:
            row = connection.execute(text(POSTGRES_LIMITS_SQL)).one()
        return ServerLimits.from_row(tuple(row))

    async def read_in_thread() -> ServerLimits:
        import asyncio

        return await asyncio.to_thread(read_sync)

    return read_in_thread


# The PostgreSQL drivers whose connect() takes application_name as a keyword (libpq's
# and pg8000's), and asyncpg, which takes it among its server_settings.
_APPLICATION_NAME_KEYWORD = frozenset(
    {"psycopg", "psycopg_async", "psycopg2", "psycopg2cffi", "pg8000"}
)


def taggable(engine: Engine | AsyncEngine) -> bool:
    """Whether the connections of ``engine`` (on PostgreSQL) can carry a tag."""
    sync_engine = engine if isinstance(engine, Engine) else engine.sync_engine
    dialect = sync_engine.dialect
    return dialect.name == "postgresql" and (
        dialect.driver == "asyncpg" or dialect.driver in _APPLICATION_NAME_KEYWORD
    )


def tag_parameters(driver: str, cparams: dict[str, Any], tag: str) -> None:
    """Put ``tag`` at the end of the application_name in a driver's connect() keywords."""
    if driver == "asyncpg":
        tag_server_settings(cparams, tag)
    elif driver in _APPLICATION_NAME_KEYWORD:
        cparams["application_name"] = tagged_name(tag, cparams.get("application_name"))
