"""The whole matrix: a database and a limited login per stack, every cell in a process of
its own, the server's own count of the login's sessions beside it.

What a cell must show, and how a stack's runs are judged, is :mod:`.verdicts`.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from tests.stacks.stacks import LOGIN_LIMIT, STACKS, WIRINGS, Stack
from tests.stacks.verdicts import ask_the_cells_again, ask_the_control_again, line

__all__ = ["MODES", "Mode", "Servers", "run_matrix", "servers_from_environment"]

SETUPS = ("poolwatch", "autosize")
CELL_TIMEOUT = 300  # seconds: a cell's process is killed, and the cell crashed, after it
ROOT = Path(__file__).resolve().parents[2]


@dataclasses.dataclass(frozen=True)
class Mode:
    """How much traffic each cell gets."""

    name: str
    workers: int
    requests: int  # per worker (autosize cells go on until the limit grew)


MODES = {
    "short": Mode("short", workers=30, requests=8),
    "full": Mode("full", workers=100, requests=60),
}


@dataclasses.dataclass(frozen=True)
class Servers:
    """The admin URLs of the servers the matrix may use (``None``: not available)."""

    postgres: str | None  # postgresql://postgres@host:port/postgres
    mysql: str | None  # mysql://root:@host:port/


# -- provisioning: a database and a limited login per stack --------------------------------

_PG_SCHEMA = """
CREATE TABLE shop_item (
    id serial PRIMARY KEY, name varchar(100) NOT NULL, stock integer NOT NULL DEFAULT 1000000
);
CREATE TABLE shop_order (
    id serial PRIMARY KEY,
    item_id integer NOT NULL REFERENCES shop_item (id),
    quantity integer NOT NULL
);
INSERT INTO shop_item (name) SELECT 'item ' || g FROM generate_series(1, 50) AS g;
"""
_MYSQL_SCHEMA = (
    "CREATE TABLE shop_item (id INT AUTO_INCREMENT PRIMARY KEY, name VARCHAR(100) NOT NULL,"
    " stock INT NOT NULL DEFAULT 1000000) ENGINE=InnoDB",
    "CREATE TABLE shop_order (id INT AUTO_INCREMENT PRIMARY KEY, item_id INT NOT NULL,"
    " quantity INT NOT NULL, FOREIGN KEY (item_id) REFERENCES shop_item (id)) ENGINE=InnoDB",
)
_SQLITE_SCHEMA = (
    "CREATE TABLE shop_item (id INTEGER PRIMARY KEY, name VARCHAR(100) NOT NULL,"
    " stock INTEGER NOT NULL DEFAULT 1000000)",
    "CREATE TABLE shop_order (id INTEGER PRIMARY KEY, item_id INTEGER NOT NULL"
    " REFERENCES shop_item (id), quantity INTEGER NOT NULL)",
)
_SCHEMES = {
    ("sqlalchemy", "asyncpg"): "postgresql+asyncpg",
    ("sqlalchemy", "psycopg"): "postgresql+psycopg",
    ("sqlalchemy", "asyncmy"): "mysql+asyncmy",
    ("sqlalchemy", "pymysql"): "mysql+pymysql",
    ("sqlalchemy", "aiosqlite"): "sqlite+aiosqlite",
    ("tortoise", "asyncpg"): "asyncpg",
    ("tortoise", "psycopg"): "psycopg",
    ("tortoise", "sqlite"): "sqlite",
    ("tortoise", "mysql"): "mysql",
}


@dataclasses.dataclass
class Provisioned:
    """A stack's database: the app's URL, and how to count its login's sessions."""

    url: str
    sessions: Callable[[], int]
    drop: Callable[[], None]


def _postgres(servers: Servers, chosen: Stack) -> Provisioned:
    import psycopg
    from psycopg import sql

    assert servers.postgres is not None
    name = f"matrix_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(servers.postgres, autocommit=True) as admin:
        admin.execute(
            sql.SQL("CREATE ROLE {} LOGIN CONNECTION LIMIT {}").format(
                sql.Identifier(name), sql.Literal(LOGIN_LIMIT)
            )
        )
        admin.execute(sql.SQL("CREATE DATABASE {} OWNER {}").format(*[sql.Identifier(name)] * 2))
    parts = urlsplit(servers.postgres)
    database = parts._replace(path=f"/{name}").geturl()
    with psycopg.connect(database, autocommit=True) as admin:
        admin.execute(sql.SQL("SET ROLE {}").format(sql.Identifier(name)))
        admin.execute(_PG_SCHEMA)
    scheme = _SCHEMES[(chosen.orm, chosen.driver)]
    url = f"{scheme}://{name}@{parts.hostname}:{parts.port}/{name}"
    watcher = psycopg.connect(servers.postgres, autocommit=True)
    lock = threading.Lock()

    def sessions() -> int:
        with lock:
            row = watcher.execute(
                "SELECT count(*) FROM pg_stat_activity WHERE usename = %s", (name,)
            ).fetchone()
        return int(row[0]) if row else 0

    def drop() -> None:
        watcher.close()
        with psycopg.connect(servers.postgres, autocommit=True) as admin:
            admin.execute(
                sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
            )
            admin.execute(sql.SQL("DROP ROLE IF EXISTS {}").format(sql.Identifier(name)))

    return Provisioned(url, sessions, drop)


def _mysql(servers: Servers, chosen: Stack) -> Provisioned:
    import pymysql

    assert servers.mysql is not None
    parts = urlsplit(servers.mysql)
    name = f"matrix_{uuid.uuid4().hex[:10]}"

    def admin() -> Any:
        return pymysql.connect(
            host=parts.hostname, port=parts.port, user=parts.username or "root", autocommit=True
        )

    with admin() as connection, connection.cursor() as cursor:
        cursor.execute(f"CREATE DATABASE {name}")
        cursor.execute(f"CREATE USER '{name}'@'%' WITH MAX_USER_CONNECTIONS {LOGIN_LIMIT}")
        cursor.execute(f"GRANT ALL ON {name}.* TO '{name}'@'%'")
        cursor.execute(f"USE {name}")
        for statement in _MYSQL_SCHEMA:
            cursor.execute(statement)
        cursor.execute(
            "INSERT INTO shop_item (name) VALUES " + ",".join(f"('item {i}')" for i in range(50))
        )
    scheme = _SCHEMES[(chosen.orm, chosen.driver)]
    login = f"{name}:" if chosen.orm == "tortoise" else name
    url = f"{scheme}://{login}@{parts.hostname}:{parts.port}/{name}"
    watcher = admin()
    lock = threading.Lock()

    def sessions() -> int:
        with lock, watcher.cursor() as cursor:
            cursor.execute(
                "SELECT count(*) FROM information_schema.processlist WHERE user = %s", (name,)
            )
            row = cursor.fetchone()
        return int(row[0]) if row else 0

    def drop() -> None:
        watcher.close()
        with admin() as connection, connection.cursor() as cursor:
            cursor.execute(f"DROP DATABASE IF EXISTS {name}")
            cursor.execute(f"DROP USER IF EXISTS '{name}'@'%'")

    return Provisioned(url, sessions, drop)


def _sqlite(work: Path, chosen: Stack) -> Provisioned:
    import sqlite3

    path = work / f"{chosen.name}-{uuid.uuid4().hex[:6]}.sqlite"
    with sqlite3.connect(path) as connection:
        for statement in _SQLITE_SCHEMA:
            connection.execute(statement)
        connection.executemany(
            "INSERT INTO shop_item (name) VALUES (?)", [(f"item {i}",) for i in range(50)]
        )
    scheme = _SCHEMES[(chosen.orm, chosen.driver)]
    return Provisioned(f"{scheme}:///{path}", lambda: 0, lambda: path.unlink(missing_ok=True))


def provision(servers: Servers, chosen: Stack, work: Path) -> Provisioned | None:
    """A fresh database and login for ``chosen``; ``None`` if its server is missing."""
    if chosen.database == "postgresql":
        return None if servers.postgres is None else _postgres(servers, chosen)
    if chosen.database == "mysql":
        return None if servers.mysql is None else _mysql(servers, chosen)
    return _sqlite(work, chosen)


# -- one cell ----------------------------------------------------------------------------


@contextmanager
def _peak(sessions: Callable[[], int]) -> Iterator[list[int]]:
    """The most sessions seen at once while the block runs (sampled every 20 ms)."""
    peak = [0]
    stop = threading.Event()

    def sample() -> None:
        while not stop.wait(0.02):
            peak[0] = max(peak[0], sessions())

    thread = threading.Thread(target=sample, daemon=True)
    thread.start()
    try:
        yield peak
    finally:
        stop.set()
        thread.join(10)


def run_cell(
    chosen: Stack, wiring: str, setup: str, database: Provisioned, mode: Mode
) -> dict[str, Any]:
    """One cell in a process of its own; its JSON, with the peak sessions added."""
    command = [
        sys.executable,
        "-m",
        "tests.stacks.cell",
        chosen.name,
        wiring,
        setup,
        database.url,
        f"--workers={mode.workers}",
        f"--requests={mode.requests}",
    ]
    started = time.monotonic()
    result: dict[str, Any]
    with _peak(database.sessions) as peak:
        try:
            done: subprocess.CompletedProcess[str] | None = subprocess.run(
                command,
                cwd=ROOT,
                capture_output=True,
                text=True,
                timeout=CELL_TIMEOUT,
                check=False,
            )
        except subprocess.TimeoutExpired:
            # The cell's own verdict (a crash), not the end of the whole matrix.
            done = None
    if done is None:
        result = {"crash": f"no result within {CELL_TIMEOUT} s"}
    else:
        lines = done.stdout.strip().splitlines()
        try:
            result = json.loads(lines[-1])
        except (IndexError, json.JSONDecodeError):
            result = {"crash": f"exit {done.returncode}: {done.stderr.strip()[-2000:]}"}
    result.update(stack=chosen.name, wiring=wiring, setup=setup)
    result["peak_sessions"] = peak[0]
    result["wall"] = round(time.monotonic() - started, 1)
    return result


def run_stack(
    servers: Servers,
    chosen: Stack,
    mode: Mode,
    folder: Path,
    *,
    wirings: Sequence[str],
    log: Callable[[str], None],
) -> list[dict[str, Any]]:
    """Every cell of one stack, on a database and login of its own, control first."""
    database = provision(servers, chosen, folder)
    if database is None:
        log(f"{chosen.name}: no {chosen.database} server, skipped")
        return []
    results = []
    try:
        cells = [("import", "control")]
        cells += [(wiring, setup) for wiring in wirings for setup in SETUPS]
        for wiring, setup in cells:
            result = run_cell(chosen, wiring, setup, database, mode)
            results.append(result)
            log(line(result))

        def again(wiring: str, setup: str) -> dict[str, Any]:
            return run_cell(chosen, wiring, setup, database, mode)

        ask_the_control_again(results, lambda: again("import", "control"), log)
        ask_the_cells_again(results, again, log)
    finally:
        database.drop()
    return results


def run_matrix(
    servers: Servers,
    mode: Mode,
    *,
    stacks: Sequence[Stack] = STACKS,
    wirings: Sequence[str] = WIRINGS,
    log: Callable[[str], None] = print,
    parallel: int = 2,
) -> list[dict[str, Any]]:
    """Every cell of ``stacks`` x ``wirings`` x setups, in the order of ``stacks``.

    ``parallel`` stacks run at once: each has its own database and login, so their
    checks do not see each other, and a cell's app (one process, one core) leaves room
    beside it for the database and the next cell's start-up.
    """
    with (
        tempfile.TemporaryDirectory(prefix="poolwatch-matrix-") as folder,
        concurrent.futures.ThreadPoolExecutor(max_workers=parallel) as pool,
    ):
        futures = [
            pool.submit(run_stack, servers, chosen, mode, Path(folder), wirings=wirings, log=log)
            for chosen in stacks
        ]
        return [result for future in futures for result in future.result()]


def servers_from_environment() -> Servers:
    """The test command's servers (``POOLWATCH_TEST_PG_DSN``, ``POOLWATCH_TEST_MYSQL_URL``)."""
    return Servers(
        postgres=os.environ.get("POOLWATCH_TEST_PG_DSN"),
        mysql=os.environ.get("POOLWATCH_TEST_MYSQL_URL"),
    )
