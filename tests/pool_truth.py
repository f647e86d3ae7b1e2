"""The drivers' and servers' own word on connections, for tests to check poolwatch against.

Read straight from the driver's pool and the server, never through poolwatch's readers:
a test that compared poolwatch with itself would pass on any bug.
"""

from __future__ import annotations

import asyncio
from typing import Any
from urllib.parse import urlsplit

import psycopg

__all__ = [
    "driver_in_use",
    "driver_size",
    "mysql_open_transactions",
    "mysql_transactions_settled",
    "pg_idle_in_transaction",
    "settled",
]


def driver_in_use(client: Any) -> int:
    """Connections a Tortoise client's driver pool has handed out (SQLite: its lock), or
    a SQLAlchemy pool has checked out."""
    if callable(getattr(client, "checkedout", None)):  # a SQLAlchemy QueuePool
        return int(client.checkedout())
    pool = getattr(client, "_pool", None)
    if pool is None:
        lock = getattr(client, "_lock", None)
        return int(lock is not None and lock.locked())
    if hasattr(pool, "get_idle_size"):  # asyncpg
        return int(pool.get_size() - pool.get_idle_size())
    if hasattr(pool, "get_stats"):  # psycopg_pool
        stats = pool.get_stats()
        return int(stats.get("pool_size", 0) - stats.get("pool_available", 0))
    return int(pool.size - pool.freesize)  # aiomysql, asyncmy


def driver_size(client: Any) -> int:
    """Connections a Tortoise client's driver pool holds open."""
    pool = getattr(client, "_pool", None)
    if pool is None:
        return int(getattr(client, "_connection", None) is not None)
    if hasattr(pool, "get_idle_size"):
        return int(pool.get_size())
    if hasattr(pool, "get_stats"):
        return int(pool.get_stats().get("pool_size", 0))
    return int(pool.size)


async def settled(client: Any, seconds: float = 5.0) -> int:
    """Waits (up to ``seconds``) for the driver to count no connection in use; returns
    the count it ended with. Returns and give-backs finish a few loop turns late, and an
    older SQLAlchemy's session closes a cancelled request's connection in a task of its
    own, after the request's task has ended."""
    for _ in range(int(seconds / 0.02)):
        if not driver_in_use(client):
            break
        await asyncio.sleep(0.02)
    return driver_in_use(client)


def pg_idle_in_transaction(dsn: str) -> int:
    """Sessions on ``dsn``'s database left idle inside a transaction."""
    database = urlsplit(dsn).path.lstrip("/")
    with psycopg.connect(dsn) as connection:
        row = connection.execute(
            "SELECT count(*) FROM pg_stat_activity "
            "WHERE datname = %s AND state LIKE 'idle in transaction%%'",
            (database,),
        ).fetchone()
    return int(row[0]) if row else 0


def mysql_open_transactions(url: str) -> int:
    """InnoDB transactions open on ``url``'s database (a session left inside BEGIN)."""
    import pymysql

    parts = urlsplit(url)
    database = parts.path.lstrip("/")
    with (
        pymysql.connect(
            host=parts.hostname, port=parts.port, user=parts.username or "root"
        ) as connection,
        connection.cursor() as cursor,
    ):
        cursor.execute(
            "SELECT count(*) FROM information_schema.innodb_trx AS trx "
            "JOIN information_schema.processlist AS session "
            "ON session.id = trx.trx_mysql_thread_id WHERE session.db = %s",
            (database,),
        )
        row = cursor.fetchone()
    return int(row[0]) if row else 0


async def mysql_transactions_settled(url: str, seconds: float = 5.0) -> int:
    """Waits (up to ``seconds``) for ``url``'s database to have no transaction open;
    returns the count it ended with. A connection given back closed ends its session a
    few loop turns late, and its transaction with it: on this loop, so it is awaited."""
    for _ in range(int(seconds / 0.05)):
        if not await asyncio.to_thread(mysql_open_transactions, url):
            break
        await asyncio.sleep(0.05)
    return await asyncio.to_thread(mysql_open_transactions, url)
