"""Fixtures shared by the whole suite.

The PostgreSQL fixtures use the throwaway server that the test command (``noxfile.py``)
starts; it describes the server in ``POOLWATCH_TEST_PG_DSN``. Without it (a bare
``pytest`` run) those tests are skipped, except under CI, where a missing server is an
error: a CI job that silently skips the PostgreSQL tests would report a pass it never
earned.
"""

from __future__ import annotations

import os
import shutil
import uuid
from collections.abc import Iterator
from typing import Any, NoReturn
from urllib.parse import urlsplit

import psycopg
import pytest
from psycopg import sql

from poolwatch import PoolWatch

pytest_plugins = ["pytester"]  # for the tests of poolwatch's own pytest plugin

TEST_COMMAND = "python3 -m nox -s tests"


def _in_ci() -> bool:
    return os.environ.get("CI", "").lower() not in {"", "0", "false", "no"}


def _unavailable(reason: str) -> NoReturn:
    """Skip the test locally; fail it under CI."""
    if _in_ci():
        pytest.fail(f"{reason} (CI is set, so this fails instead of skipping)", pytrace=False)
    pytest.skip(f"{reason}; `{TEST_COMMAND}` provides it")


@pytest.fixture
def watch() -> Iterator[PoolWatch]:
    """A PoolWatch instrumenting every Tortoise connection, undone after the test."""
    w = PoolWatch()
    w.instrument_tortoise()
    yield w
    w.uninstrument()


@pytest.fixture
def make_watch() -> Iterator[Any]:
    """Makes PoolWatches (``make_watch(**settings)``), all undone after the test."""
    made: list[PoolWatch] = []

    def make(**settings: Any) -> PoolWatch:
        watch = PoolWatch(**settings)
        made.append(watch)
        return watch

    yield make
    for watch in made:
        watch.uninstrument()


@pytest.fixture(scope="session")
def pg_dsn() -> str:
    """DSN of the test server's ``postgres`` database (superuser, trust auth)."""
    dsn = os.environ.get("POOLWATCH_TEST_PG_DSN")
    if not dsn:
        _unavailable("no PostgreSQL server: POOLWATCH_TEST_PG_DSN is not set")
    return dsn


@pytest.fixture
def pg_database(pg_dsn: str) -> Iterator[str]:
    """DSN of a new, empty database, dropped after the test.

    A database per test keeps tables, sequences and statistics from leaking between tests.
    """
    name = f"poolwatch_test_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(pg_dsn, autocommit=True) as admin:
        admin.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    try:
        yield urlsplit(pg_dsn)._replace(path=f"/{name}").geturl()
    finally:
        with psycopg.connect(pg_dsn, autocommit=True) as admin:
            # FORCE ends the connections a failing test may have left open (PostgreSQL 13+).
            admin.execute(
                sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
            )


@pytest.fixture(scope="session")
def mysql_url() -> str:
    """``mysql://root:@127.0.0.1:PORT/`` of the test MariaDB server (no database)."""
    url = os.environ.get("POOLWATCH_TEST_MYSQL_URL")
    if not url:
        _unavailable("no MariaDB server: POOLWATCH_TEST_MYSQL_URL is not set")
    return url


@pytest.fixture
def mysql_database(mysql_url: str) -> Iterator[str]:
    """``mysql://root:@127.0.0.1:PORT/NAME`` of a new, empty database, dropped afterwards."""
    import pymysql

    name = f"poolwatch_test_{uuid.uuid4().hex[:12]}"
    parts = urlsplit(mysql_url)

    def admin() -> pymysql.connections.Connection:  # type: ignore[type-arg]
        return pymysql.connect(host=parts.hostname, port=parts.port, user=parts.username or "root")

    with admin() as connection, connection.cursor() as cursor:
        cursor.execute(f"CREATE DATABASE {name}")
    try:
        yield parts._replace(path=f"/{name}").geturl()
    finally:
        with admin() as connection, connection.cursor() as cursor:
            cursor.execute(f"DROP DATABASE IF EXISTS {name}")


@pytest.fixture(scope="session")
def promtool() -> str:
    """Path of Prometheus's ``promtool`` (Debian package ``prometheus``)."""
    path = shutil.which("promtool")
    if path is None:
        _unavailable("promtool is not installed (Debian package: prometheus)")
    return path
