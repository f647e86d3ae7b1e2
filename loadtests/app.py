"""The app the load tests drive: the demo blog, plus endpoints that misbehave on purpose.

    uvicorn loadtests.app:create_app --factory

Configured by the environment, so the runner can start it as it is started in production:
``DATABASE_URL`` (Tortoise URL, pool size included), ``POOLWATCH_*`` (poolwatch's settings:
``acquire_timeout``, ``leak_threshold``...) and ``POOLWATCH_LOADTEST_AUTOSIZE`` (a JSON
object of :class:`~poolwatch.Autosize` fields, or nothing).

The extra endpoints, under ``/load``:

* ``/load/hold?seconds=`` takes a connection and keeps it inside a transaction;
* ``/load/slow?seconds=`` runs one slow statement;
* ``/load/io`` runs a short statement that waits in the database (I/O-bound);
* ``/load/cpu`` runs a short statement that computes in the database (CPU-bound);
* ``/load/error`` runs a statement the database rejects;
* ``/posts/{id}/reviewed-comments`` adds a comment after asking an outside service (a
  simulated outbound call) with the transaction open: the connection waits, idle in
  transaction, for the whole call;
* ``/posts/{id}/checked-comments`` makes the same call before it opens the transaction
  (the control: the same work, no connection held across the call).
"""

from __future__ import annotations

import asyncio
import json
import os
from typing import Any

from fastapi import FastAPI
from fastapi.responses import JSONResponse
from tortoise import connections
from tortoise.exceptions import OperationalError
from tortoise.transactions import in_transaction

from poolwatch import PoolWatch
from poolwatch.demo.app import create_app as create_demo_app
from poolwatch.demo.models import Comment, Post

__all__ = ["create_app"]


def _sleep_sql(seconds: float) -> str:
    # SQLite has no sleep: a recursive count of about the same length stands in.
    if _is_sqlite():
        rows = max(1, int(seconds * 2_000_000))
        return (
            "WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c "
            f"WHERE x < {rows}) SELECT count(*) FROM c"
        )
    return f"SELECT pg_sleep({seconds:.3f})"


# About 20 ms of one PostgreSQL core: a count over a generated series.
_CPU_SQL = "SELECT count(*) AS n FROM generate_series(1, 400000)"


# The outside service's answer time (a moderation API, a payment provider).
OUTBOUND_SECONDS = 0.3


async def _moderate(text: str) -> bool:
    """A call to another service, simulated: it awaits, and needs no connection."""
    await asyncio.sleep(OUTBOUND_SECONDS)
    return "spam" not in text


def _is_sqlite() -> bool:
    return os.environ.get("DATABASE_URL", "sqlite").startswith("sqlite")


def create_app() -> FastAPI:
    """The demo app with poolwatch configured from the environment, and /load endpoints."""
    raw = os.environ.get("POOLWATCH_LOADTEST_AUTOSIZE", "").strip()
    autosize: dict[str, Any] | None = json.loads(raw) if raw else None
    app = create_demo_app(os.environ.get("DATABASE_URL"), PoolWatch(), autosize=autosize)

    @app.get("/load/hold")
    async def hold(seconds: float = 1.0) -> dict[str, float]:
        """Keep one connection for ``seconds`` (a transaction around a slow call)."""
        async with in_transaction() as connection:
            await connection.execute_query(_sleep_sql(min(seconds, 30.0)))
        return {"held": seconds}

    @app.get("/load/slow")
    async def slow(seconds: float = 1.2) -> dict[str, float]:
        """One statement that takes ``seconds``."""
        await connections.get("default").execute_query(_sleep_sql(min(seconds, 30.0)))
        return {"slept": seconds}

    @app.get("/load/io")
    async def io_bound() -> dict[str, str]:
        """A statement that waits in the database for 50 ms."""
        await connections.get("default").execute_query(_sleep_sql(0.05))
        return {"ok": "waited"}

    @app.get("/load/cpu")
    async def cpu_bound() -> dict[str, int]:
        """A statement that keeps a database core busy for about 20 ms: past as many
        connections as the database has cores, more connections only slow each other."""
        rows = await connections.get("default").execute_query_dict(_CPU_SQL)
        return {"counted": int(rows[0]["n"])}

    @app.get("/load/error", response_model=None)
    async def error() -> JSONResponse:
        """A statement the database rejects (an unknown table): the app answers 500."""
        try:
            await connections.get("default").execute_query("SELECT * FROM no_such_table_here")
        except OperationalError as exc:
            return JSONResponse({"error": type(exc).__name__}, status_code=500)
        return JSONResponse({"ok": "unreachable"})

    @app.post("/posts/{post_id}/reviewed-comments", status_code=201)
    async def add_reviewed_comment(post_id: int, text: str = "Nice post") -> dict[str, Any]:
        """Add a comment, asking the moderation service inside the transaction."""
        async with in_transaction() as connection:
            post = await Post.get(id=post_id, using_db=connection)
            accepted = await _moderate(text)  # the transaction waits for the call
            comment = await Comment.create(text=text, post=post, using_db=connection)
        return {"id": comment.id, "accepted": accepted}

    @app.post("/posts/{post_id}/checked-comments", status_code=201)
    async def add_checked_comment(post_id: int, text: str = "Nice post") -> dict[str, Any]:
        """The same, with the call made before the transaction takes a connection."""
        accepted = await _moderate(text)
        async with in_transaction() as connection:
            post = await Post.get(id=post_id, using_db=connection)
            comment = await Comment.create(text=text, post=post, using_db=connection)
        return {"id": comment.id, "accepted": accepted}

    return app
