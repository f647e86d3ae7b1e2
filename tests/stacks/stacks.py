"""The stacks of the matrix: an ORM, a driver and a database each.

Each app connects as a login of its own with a connection limit (PostgreSQL's
``CONNECTION LIMIT``, MariaDB's ``MAX_USER_CONNECTIONS``), as production apps do; SQLite
has no server and no limit.
"""

from __future__ import annotations

import dataclasses

__all__ = ["LOGIN_LIMIT", "POOL_CEILING", "STACKS", "STATIC_POOL", "WIRINGS", "Stack"]

LOGIN_LIMIT = 12  # connections the app's login may open on the server
STATIC_POOL = 8  # the pool without autosize: sized by hand within the login's limit
POOL_CEILING = 30  # the pool under autosize: far past the limit, autosize must keep within
WIRINGS = ("import", "loop", "thread", "fork")


@dataclasses.dataclass(frozen=True)
class Stack:
    """One ORM on one driver and database."""

    name: str
    orm: str  # "sqlalchemy" or "tortoise"
    database: str  # "postgresql", "mysql" or "sqlite"
    driver: str  # the URL's driver: asyncpg, psycopg, asyncmy, pymysql, aiosqlite...
    sync: bool = False  # a sync SQLAlchemy engine, used from Starlette's thread pool

    @property
    def pooled(self) -> bool:
        """Whether the stack has a pool autosize can size (Tortoise's SQLite has none)."""
        return not (self.orm == "tortoise" and self.database == "sqlite")

    @property
    def budget_read(self) -> bool:
        """Whether autosize reads the database's budget (PostgreSQL); elsewhere the
        README tells users to set ``Autosize(budget=...)`` by hand, and so do we."""
        return self.database == "postgresql"


STACKS = (
    Stack("sqlalchemy-async-asyncpg", "sqlalchemy", "postgresql", "asyncpg"),
    Stack("sqlalchemy-async-psycopg", "sqlalchemy", "postgresql", "psycopg"),
    Stack("sqlalchemy-async-asyncmy", "sqlalchemy", "mysql", "asyncmy"),
    Stack("sqlalchemy-sync-psycopg", "sqlalchemy", "postgresql", "psycopg", sync=True),
    Stack("sqlalchemy-sync-pymysql", "sqlalchemy", "mysql", "pymysql", sync=True),
    Stack("sqlalchemy-async-aiosqlite", "sqlalchemy", "sqlite", "aiosqlite"),
    Stack("tortoise-asyncpg", "tortoise", "postgresql", "asyncpg"),
    Stack("tortoise-psycopg", "tortoise", "postgresql", "psycopg"),
    Stack("tortoise-sqlite", "tortoise", "sqlite", "sqlite"),
    Stack("tortoise-mysql", "tortoise", "mysql", "mysql"),
)


def stack(name: str) -> Stack:
    """The stack called ``name``."""
    for candidate in STACKS:
        if candidate.name == name:
            return candidate
    raise KeyError(name)
