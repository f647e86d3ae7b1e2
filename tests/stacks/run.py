"""The whole matrix: a database and a limited login per stack, every cell in a process of
its own, the server's own count of the login's sessions beside it, the checks, the table.

What a cell must show (:func:`failures`), against the control of its stack:

* the app's errors are the control's (both none: an abandoned request is no error);
* once traffic stopped, poolwatch's gauges equal the driver's counts, nothing waits, and
  poolwatch's drift is 0; it counted no internal error;
* the login's sessions never exceed its limit, and, under autosize, neither does the limit;
  autosize grew when the clients queued, and read the budget where there is one to read;
* asyncio reported no more futures nobody retrieved than the control (with some slack:
  drivers leave a few behind abandoned requests on their own).
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

__all__ = ["Mode", "Servers", "failures", "run_matrix", "table"]

SETUPS = ("poolwatch", "autosize")
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
    with _peak(database.sessions) as peak:
        done = subprocess.run(
            command, cwd=ROOT, capture_output=True, text=True, timeout=300, check=False
        )
    lines = done.stdout.strip().splitlines()
    try:
        result: dict[str, Any] = json.loads(lines[-1])
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
            log(_line(result))
        _ask_the_control_again(results, chosen, database, mode, log)
    finally:
        database.drop()
    return results


CONTROL_RERUNS = 2


def _ask_the_control_again(
    results: list[dict[str, Any]],
    chosen: Stack,
    database: Provisioned,
    mode: Mode,
    log: Callable[[str], None],
) -> None:
    """Run the control again while a cell shows an app error it did not, and keep the
    most of each kind any control run had.

    Some errors come and go by chance: SQLite's "database is locked" behind a cancelled
    request, a driver's error after an abandoned query. One control run may miss one a
    cell happened to meet; the app has it on its own if another control run meets it
    too. An error poolwatch causes shows in every run with it and in no control run.
    """
    control = results[0]
    for _ in range(CONTROL_RERUNS):
        if "crash" in control or not any(
            _errors(result, control) for result in results[1:] if "crash" not in result
        ):
            return
        again = run_cell(chosen, "import", "control", database, mode)
        log(_line(again) + " (the control again)")
        if "crash" in again:
            return
        merged = dict(control.get("errors", {}))
        for kind, count in again.get("errors", {}).items():
            merged[kind] = max(merged.get(kind, 0), count)
        control["errors"] = merged
        control["control_runs"] = control.get("control_runs", 1) + 1


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


# -- verdicts ----------------------------------------------------------------------------


def _ok(result: dict[str, Any]) -> int:
    statuses = result.get("statuses", {})
    return sum(n for status, n in statuses.items() if status in ("200", "409"))


def problems_of(result: dict[str, Any], control: dict[str, Any] | None) -> list[str]:
    """What is wrong with one cell (its stack's control beside it)."""
    if "crash" in result:
        return [f"crashed: {result['crash']}"]
    found = _errors(result, control)
    if not _ok(result):
        found.append("no request succeeded")
    used = result["driver"]["used"]
    if used:  # connections lost (the control's are recorded: some drivers lose them)
        found.append(f"the driver still has {used} connection(s) in use")
    if result["peak_sessions"] > LOGIN_LIMIT:
        found.append(f"{result['peak_sessions']} sessions, above the login's {LOGIN_LIMIT}")
    if result["setup"] == "control":
        return found
    return found + _poolwatch(result) + _unretrieved(result, control)


def _errors(result: dict[str, Any], control: dict[str, Any] | None) -> list[str]:
    errors = result.get("errors", {})
    if result["setup"] == "control" or control is None:
        return [f"app errors {errors}"] if errors else []
    # A driver may fail an app under cancellations by itself (the control shows it):
    # poolwatch may add no error of another kind, nor many more of the same.
    known = control.get("errors", {})
    extra = {kind: n for kind, n in errors.items() if kind not in known or n > 2 * known[kind] + 3}
    return [f"app errors the control did not have {extra}"] if extra else []


def _poolwatch(result: dict[str, Any]) -> list[str]:
    """poolwatch's own account: gauges as the driver's, no fault, autosize in bounds."""
    found = []
    gauges, driver = result["gauges"], result["driver"]
    want = {"used": driver["used"], "idle": driver["idle"], "pending": 0, "drift": 0}
    for key, expected in want.items():
        if gauges[key] != expected:
            found.append(f"poolwatch's {key} is {gauges[key]:g}, the driver's {expected}")
    if result["internal_errors"]:
        found.append(f"{result['internal_errors']:g} internal error(s)")
    if "peak_limit" in result:
        if not 2 < result["peak_limit"] <= LOGIN_LIMIT:
            found.append(f"autosize's limit peaked at {result['peak_limit']}")
        if result.get("budget_read_errors"):
            found.append(f"{result['budget_read_errors']:g} failed budget read(s)")
    return found


def _unretrieved(result: dict[str, Any], control: dict[str, Any] | None) -> list[str]:
    if control is None or "unretrieved" not in control:
        return []
    # Some drivers leave a few behind abandoned requests by themselves.
    if result.get("unretrieved", 0) <= 2 * control["unretrieved"] + 5:
        return []
    return [f"{result['unretrieved']} futures never retrieved (control {control['unretrieved']})"]


def failures(results: list[dict[str, Any]]) -> list[str]:
    """Every problem of every cell, named by its cell."""
    controls = {r["stack"]: r for r in results if r["setup"] == "control"}
    found = []
    for result in results:
        name = f"{result['stack']}/{result['wiring']}/{result['setup']}"
        if result["setup"] == "control":
            # What the app does without poolwatch is the yardstick, not a verdict on
            # poolwatch; only a control that did not run leaves nothing to compare with.
            if "crash" in result:
                found.append(f"{name}: crashed: {result['crash']}")
            continue
        found += [f"{name}: {p}" for p in problems_of(result, controls.get(result["stack"]))]
    return found


def _line(result: dict[str, Any]) -> str:
    problems = problems_of(result, None)
    return (
        f"  {result['stack']}/{result['wiring']}/{result['setup']}: {_ok(result)} ok, "
        f"{result.get('statuses', {}).get('abandoned', 0)} abandoned, peak "
        f"{result['peak_sessions']} sessions, limit {result.get('peak_limit', '-')}, "
        f"{result.get('wall', 0)} s: {'; '.join(problems) or 'ok'}"
    )


def table(results: list[dict[str, Any]]) -> str:
    """The matrix as a Markdown table."""
    lines = [
        f"Each cell: its own process; the login may open {LOGIN_LIMIT} connections.",
        "",
        "| stack | wiring | setup | ok requests | abandoned | app errors | peak sessions "
        "| peak limit | gauges = driver | unretrieved futures | verdict |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    controls = {r["stack"]: r for r in results if r["setup"] == "control"}
    for result in results:
        if "crash" in result:
            lines.append(
                f"| {result['stack']} | {result['wiring']} | {result['setup']} | "
                f"crashed | | | | | | | no |"
            )
            continue
        problems = problems_of(result, controls.get(result["stack"]))
        gauges = (
            "n/a"
            if result["setup"] == "control"
            else ("yes" if not any("poolwatch's" in p for p in problems) else "no")
        )
        errors = sum(result.get("errors", {}).values())
        lines.append(
            f"| {result['stack']} | {result['wiring'] if result['setup'] != 'control' else '-'} "
            f"| {result['setup']} | {_ok(result)} | {result['statuses'].get('abandoned', 0)} "
            f"| {errors} | {result['peak_sessions'] or 'n/a'} | {result.get('peak_limit', '-')} "
            f"| {gauges} | {result.get('unretrieved', 0)} | {'ok' if not problems else 'FAIL'} |"
        )
    return "\n".join(lines)


def servers_from_environment() -> Servers:
    """The test command's servers (``POOLWATCH_TEST_PG_DSN``, ``POOLWATCH_TEST_MYSQL_URL``)."""
    return Servers(
        postgres=os.environ.get("POOLWATCH_TEST_PG_DSN"),
        mysql=os.environ.get("POOLWATCH_TEST_MYSQL_URL"),
    )
