"""A PostgreSQL database of the benchmarks' own, made for one run and dropped after it."""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from urllib.parse import urlsplit, urlunsplit

__all__ = ["LOOPBACK", "server_version", "temporary_database", "with_scheme"]

LOOPBACK = frozenset({"127.0.0.1", "localhost", "::1"})


def _checked(dsn: str) -> tuple[str, str]:
    """``dsn`` as a ``postgresql://`` URL and its host; only the loopback interface."""
    parts = urlsplit(dsn)
    if parts.scheme not in ("postgresql", "postgres"):
        raise ValueError(f"--pg wants a postgresql://user@127.0.0.1:port/db URL, got {dsn!r}")
    host = parts.hostname or ""
    if host not in LOOPBACK:
        raise ValueError(f"--pg host {host!r}: the benchmarks talk to 127.0.0.1 only")
    return urlunsplit(parts._replace(scheme="postgresql")), host


def with_scheme(url: str, scheme: str) -> str:
    """``url`` with another scheme: ``postgresql+psycopg``, ``asyncpg``."""
    return urlunsplit(urlsplit(url)._replace(scheme=scheme))


def server_version(dsn: str) -> str:
    """The server's ``server_version`` setting."""
    import psycopg

    url, _ = _checked(dsn)
    with psycopg.connect(url, connect_timeout=10) as conn:
        row = conn.execute("SHOW server_version").fetchone()
    return str(row[0]) if row else "?"


@contextmanager
def temporary_database(dsn: str) -> Iterator[str]:
    """Create ``poolwatch_bench_<pid>`` on the server of ``dsn``; yield its URL; drop it."""
    import psycopg
    from psycopg import sql

    url, _ = _checked(dsn)
    name = f"poolwatch_bench_{os.getpid()}"
    drop = sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
    with psycopg.connect(url, autocommit=True, connect_timeout=10) as admin:
        admin.execute(drop)
        admin.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    try:
        yield urlunsplit(urlsplit(url)._replace(path=f"/{name}"))
    finally:
        with psycopg.connect(url, autocommit=True, connect_timeout=10) as admin:
            admin.execute(drop)
