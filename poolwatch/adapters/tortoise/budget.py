"""The database's side of autosize's budget, for a Tortoise client on PostgreSQL: the
server's connection limits and the sessions it has open (by autosize's tag), asked with
:data:`~poolwatch.sizing.budget.POSTGRES_LIMITS_SQL` through the client's public
``execute_query_dict``.

No private attribute of Tortoise is touched here.
"""

from __future__ import annotations

from collections.abc import Callable, Coroutine
from typing import Any

from poolwatch.sizing.budget import POSTGRES_LIMITS_SQL, ServerLimits

__all__ = ["postgres_limits_reader"]


def postgres_limits_reader(
    client: Any, current: Callable[[], Any]
) -> Callable[[], Coroutine[Any, Any, ServerLimits]] | None:
    """A reader of the server's connection limits, if ``client`` is on PostgreSQL.

    ``current()`` returns the client to ask each time (the latest of its name).
    """
    if not type(client).__module__.startswith(
        ("tortoise.backends.asyncpg", "tortoise.backends.psycopg")
    ):
        return None

    async def read() -> ServerLimits:
        rows = await current().execute_query_dict(POSTGRES_LIMITS_SQL)
        return ServerLimits.from_row(tuple(rows[0].values()))

    return read
