"""A connection held across a wait says what it waited on, and the same code gets the same
verdict run after run, however busy the machine.

Realistic endpoints (``login_app.py``, ``login_tortoise.py``): a login that checks a
password hash in the thread pool (``run_in_threadpool``, ``asyncio.to_thread``,
``anyio.to_thread.run_sync``) with the session's connection held, a page that asks
another service (a 127.0.0.1 server) after the current-user dependency began the
transaction, a pause before a retry, sync endpoints that sleep or call out in their
worker thread, and a list read row by row from a replica with nothing but CPU work
between its statements. Each request is repeated; every run must give the same finding
(or none), naming the same lines and the same wait.

Each runs on the machine as it is and on a machine as a busy one makes it look: the
clock poolwatch reads between statements stretched by a quarter of a second at every
reading (a thread preempted by others' work, which stretched such gaps past 200 ms in
suite runs on two loaded cores), with nothing else changed. Nothing here asserts a
duration: the verdict must not hang on one.
"""

from __future__ import annotations

import itertools
import threading
import time
from collections.abc import AsyncIterator, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import pytest

from poolwatch import PoolWatch
from poolwatch.events import Finding
from poolwatch.pools import checkout, observer
from poolwatch.testing import capture
from tests.pools import login_app

REPEATS = 5
PASSWORD = "correct horse"
STRETCH = 0.25  # seconds a busy machine adds at each clock reading, in the stretched runs


class _Stock(BaseHTTPRequestHandler):
    def do_GET(self) -> None:  # another service, answering in a few milliseconds
        threading.Event().wait(0.01)
        body = b'{"in_stock": 3}'
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture(scope="module")
def stock_url() -> Iterator[str]:
    """A service on 127.0.0.1 that the app calls over the network."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Stock)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)


@pytest.fixture(params=["as is", "stretched"])
def machine(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """The machine as it is, or stretched: every reading of the clock that times the
    checkouts and their gaps a quarter second later than the last, so every gap between
    two statements lasts past the 100 ms that a measured wait needs. Whether the thread
    blocked is still measured for real."""
    if request.param == "stretched":
        readings = itertools.count(1)
        real = time.perf_counter

        def stretched() -> float:
            return real() + STRETCH * next(readings)

        monkeypatch.setattr(checkout, "perf_counter", stretched)
        monkeypatch.setattr(observer, "perf_counter", stretched)
    return str(request.param)


def _held(found: list[Finding]) -> list[Finding]:
    return [f for f in found if f.kind == "held_idle"]


def _function(path: str) -> str:
    """The function of a call path's outermost frame (``login``, ``my_stock``)."""
    return path.split(" -> ", maxsplit=1)[0].rsplit(" in ", 1)[1].rsplit(".", 1)[-1]


async def _each(client: httpx.AsyncClient, method: str, url: str, **kw: Any) -> list[Finding]:
    """``REPEATS`` requests, one capture each: the held_idle findings of every one."""
    verdicts = []
    for _ in range(REPEATS):
        with capture() as captured:
            response = await client.request(method, url, **kw)
        assert response.status_code in (200, 401), response.text
        verdicts.append(_held(captured.findings))
    return [f for found in verdicts for f in found] if all(verdicts) else _none(verdicts)


def _none(verdicts: list[list[Finding]]) -> list[Finding]:
    assert not any(verdicts), f"a finding on some runs only: {verdicts}"
    return []


def _same(findings: list[Finding]) -> Finding:
    """One finding per run, the same in every run (where, lines, what it waited on)."""
    assert len(findings) == REPEATS, findings
    places = {(f.where, f.before, f.call_path, f.waited_on, f.suggestion) for f in findings}
    assert len(places) == 1, places
    return findings[0]


# -- SQLAlchemy: an AsyncSession per request ----------------------------------------------


@pytest.fixture(params=["aiosqlite", "asyncpg"])
async def sqlalchemy_client(
    request: pytest.FixtureRequest, tmp_path: Path, stock_url: str
) -> AsyncIterator[httpx.AsyncClient]:
    """The app on a primary engine and a replica (a second engine on the same database,
    a pool of its own)."""
    from sqlalchemy.ext.asyncio import create_async_engine

    if request.param == "asyncpg":
        dsn = request.getfixturevalue("pg_database")
        url = "postgresql+asyncpg://" + dsn.split("://", 1)[1]
    else:
        url = f"sqlite+aiosqlite:///{tmp_path / 'login.sqlite'}"
    engine, replica = create_async_engine(url), create_async_engine(url)
    async with engine.begin() as connection:
        await connection.run_sync(login_app.Base.metadata.create_all)
        await connection.execute(
            login_app.Account.__table__.insert(),
            [
                {
                    "id": 1,
                    "email": "ada@example.com",
                    "password_hash": login_app.hash_password(PASSWORD),
                    "token": "ada-token",
                    "logins": 0,
                },
                {
                    "id": 2,
                    "email": "bob@example.com",
                    "password_hash": b"",
                    "token": "bob-token",
                    "logins": 0,
                },
            ],
        )
    watch = PoolWatch()
    watch.instrument_sqlalchemy(engine)
    watch.instrument_sqlalchemy(replica, pool="replica")
    app = login_app.make_app(engine, replica, stock_url)
    try:
        transport = httpx.ASGITransport(app=watch.wrap(app))
        async with httpx.AsyncClient(transport=transport, base_url="http://app") as client:
            yield client
    finally:
        await app.state.stock.aclose()
        watch.uninstrument()
        await engine.dispose()
        await replica.dispose()


@pytest.mark.parametrize(
    ("url", "endpoint", "waited_on"),
    [
        # Past `if account is None or not await run_in_threadpool(...): raise`, the
        # UPDATE ran: the hash surely ran before it.
        ("/login", "login", "verify_password, run in the thread pool by run_in_threadpool"),
        (
            "/login/to-thread",
            "login_to_thread",
            "verify_password, run in the thread pool by asyncio.to_thread",
        ),
        # The same `or`, then the release: an unknown address gets there without the hash.
        (
            "/login/anyio",
            "login_anyio",
            "verify_password, run in the thread pool by anyio.to_thread.run_sync "
            "(on some paths only)",
        ),
    ],
)
async def test_a_login_hashing_in_the_thread_pool_names_the_hash_every_time(
    sqlalchemy_client: httpx.AsyncClient, machine: str, url: str, endpoint: str, waited_on: str
) -> None:
    params = {"email": "ada@example.com", "password": PASSWORD}
    finding = _same(await _each(sqlalchemy_client, "POST", url, params=params))
    assert finding.waited_on == waited_on
    assert finding.transaction  # the SELECT began the session's transaction
    assert finding.route == url
    assert finding.pool == "main"
    assert _function(finding.before) == endpoint
    assert "AccountRepository.by_email" in finding.before
    assert "sending verify_password to the thread pool" in finding.suggestion
    assert f"waiting on {waited_on}" in str(finding)


@pytest.mark.parametrize(
    "params",
    [
        pytest.param({"email": "nobody@example.com", "password": PASSWORD}, id="unknown"),
        pytest.param({"email": "ada@example.com", "password": "wrong"}, id="wrong password"),
    ],
)
async def test_a_failed_login_names_the_hash_it_may_run_the_same_either_way(
    sqlalchemy_client: httpx.AsyncClient, machine: str, params: dict[str, str]
) -> None:
    # The same lines (the SELECT, then the 401's release) whether the hash ran (a wrong
    # password) or not (an unknown address): the same code, the same verdict. The
    # ROLLBACK before the release, a round trip on the connection, is no wait of the app's.
    finding = _same(await _each(sqlalchemy_client, "POST", "/login", params=params))
    assert finding.waited_on == (
        "verify_password, run in the thread pool by run_in_threadpool (on some paths only)"
    )
    assert "AccountRepository.by_email" in finding.before


async def test_the_same_select_row_by_row_with_nothing_between_is_no_finding(
    sqlalchemy_client: httpx.AsyncClient, machine: str
) -> None:
    # A loop of the same SELECT with another id each turn, on the replica: only CPU work
    # between two statements. A loaded machine once made such a gap 226 ms, blocked, and
    # a finding; the code says there is no wait, and that is the verdict.
    found = await _each(sqlalchemy_client, "GET", "/accounts", params={"ids": "1,2,3,1,2"})
    assert found == []


@pytest.mark.parametrize("machine", ["stretched"], indirect=True)
async def test_a_wait_out_of_the_readers_sight_is_only_measured(
    sqlalchemy_client: httpx.AsyncClient, machine: str
) -> None:
    # A client kept in app.state has no type to read: the code between the lines cannot
    # be judged, and the measurement decides, as before: a gap past 100 ms in which the
    # thread blocked, naming no wait (a quick answer on a quiet machine is none).
    found = await _each(
        sqlalchemy_client, "GET", "/me/stock/shared", headers={"Authorization": "ada-token"}
    )
    finding = _same(found)
    assert finding.waited_on == ""
    assert "a wait measured (the code between was not read)" in str(finding)
    assert _function(finding.call_path) == "my_stock_shared_client"


async def test_a_call_to_another_service_after_the_current_user_is_named(
    sqlalchemy_client: httpx.AsyncClient, machine: str
) -> None:
    found = await _each(
        sqlalchemy_client, "GET", "/me/stock", headers={"Authorization": "ada-token"}
    )
    finding = _same(found)
    assert finding.waited_on == "a network call, httpx.AsyncClient.get"
    assert "current_account" in finding.before  # the dependency's SELECT
    assert "AccountRepository.by_token" in finding.before
    assert _function(finding.call_path) == "my_stock"
    assert "Release the connection before httpx.AsyncClient.get" in finding.suggestion


async def test_a_pause_before_a_retry_is_named(
    sqlalchemy_client: httpx.AsyncClient, machine: str
) -> None:
    found = await _each(
        sqlalchemy_client, "POST", "/me/retry", headers={"Authorization": "ada-token"}
    )
    finding = _same(found)
    assert finding.waited_on == "a sleep, asyncio.sleep"


# -- SQLAlchemy: sync endpoints in the thread pool ----------------------------------------


@pytest.fixture(params=["sqlite", "psycopg"])
async def sync_client(
    request: pytest.FixtureRequest, tmp_path: Path, stock_url: str
) -> AsyncIterator[httpx.AsyncClient]:
    from sqlalchemy import create_engine

    if request.param == "psycopg":
        dsn = request.getfixturevalue("pg_database")
        url = "postgresql+psycopg://" + dsn.split("://", 1)[1]
    else:
        url = f"sqlite:///{tmp_path / 'reports.sqlite'}"
    engine = create_engine(url)
    login_app.Base.metadata.create_all(engine)
    with engine.begin() as connection:
        connection.execute(
            login_app.Account.__table__.insert(),
            [{"id": 1, "email": "a@example.com", "password_hash": b"", "token": "t"}],
        )
    watch = PoolWatch()
    watch.instrument_sqlalchemy(engine)
    app = watch.wrap(login_app.make_sync_app(engine, stock_url))
    try:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://app") as client:
            yield client
    finally:
        watch.uninstrument()
        engine.dispose()


@pytest.mark.parametrize(
    ("url", "waited_on"),
    [
        ("/report/slow", "a sleep, time.sleep"),
        ("/report/stock", "a network call, urllib.request.urlopen"),
    ],
)
async def test_a_sync_endpoint_waiting_in_its_thread_is_named(
    sync_client: httpx.AsyncClient, machine: str, url: str, waited_on: str
) -> None:
    finding = _same(await _each(sync_client, "POST", url))
    assert finding.waited_on == waited_on
    assert finding.transaction


# -- Tortoise: a transaction per request ------------------------------------------------


@pytest.fixture(params=["sqlite", "asyncpg"])
async def tortoise_client(
    request: pytest.FixtureRequest, tmp_path: Path, stock_url: str
) -> AsyncIterator[httpx.AsyncClient]:
    pytest.importorskip("tortoise")  # the oldest SQLAlchemy and FastAPI run without it
    from tortoise import Tortoise
    from tortoise.backends.base.executor import EXECUTOR_CACHE

    from tests.pools import login_tortoise

    if request.param == "asyncpg":
        dsn = request.getfixturevalue("pg_database")
        url = "asyncpg://" + dsn.split("://", 1)[1]
    else:
        url = f"sqlite://{tmp_path / 'members.sqlite'}"
    EXECUTOR_CACHE.clear()
    await Tortoise.init(db_url=url, modules={"models": ["tests.pools.login_tortoise"]})
    await Tortoise.generate_schemas()
    await login_tortoise.Member.create(
        id=1, email="ada@example.com", password_hash=login_app.hash_password(PASSWORD)
    )
    watch = PoolWatch()
    watch.instrument_tortoise()
    app = watch.wrap(login_tortoise.make_app(stock_url))
    try:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://app") as client:
            yield client
    finally:
        watch.uninstrument()
        await Tortoise.close_connections()


async def test_tortoise_a_login_hashing_in_the_thread_pool_is_named(
    tortoise_client: httpx.AsyncClient, machine: str
) -> None:
    params = {"email": "ada@example.com", "password": PASSWORD}
    finding = _same(await _each(tortoise_client, "POST", "/login", params=params))
    assert finding.waited_on == "verify_password, run in the thread pool by run_in_threadpool"
    assert finding.transaction
    assert "Members.by_email" in finding.before
    assert "Members.record_login" in finding.call_path


@pytest.mark.parametrize(
    ("url", "waited_on"),
    [
        ("/members/1/sync", "a network call, httpx.AsyncClient.get"),
        ("/members/1/retry", "a sleep, asyncio.sleep"),
    ],
)
async def test_tortoise_waits_inside_a_transaction_are_named(
    tortoise_client: httpx.AsyncClient, machine: str, url: str, waited_on: str
) -> None:
    finding = _same(await _each(tortoise_client, "POST", url))
    assert finding.waited_on == waited_on
    assert finding.transaction


async def test_tortoise_a_pause_after_the_transaction_is_no_finding(
    tortoise_client: httpx.AsyncClient, machine: str
) -> None:
    assert await _each(tortoise_client, "POST", "/members/1/retry-outside") == []
