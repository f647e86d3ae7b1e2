"""The pytest plugin, run on a small user suite: it reports (or, asked, fails) the app's N+1s."""

from __future__ import annotations

import pytest

APP = """
from sqlalchemy import create_engine, text
from sqlalchemy.pool import StaticPool


def make_engine():
    # One in-memory database for the test and the threads that serve its requests.
    engine = create_engine(
        "sqlite://", poolclass=StaticPool, connect_args={"check_same_thread": False}
    )
    with engine.begin() as conn:
        conn.execute(text("CREATE TABLE item (id INTEGER PRIMARY KEY, name TEXT)"))
        conn.execute(text("INSERT INTO item VALUES (1, 'a'), (2, 'b'), (3, 'c')"))
    return engine


def names(engine, ids):
    with engine.connect() as conn:
        return [
            conn.execute(text("SELECT name FROM item WHERE id = :id"), {"id": i}).scalar()
            for i in ids
        ]


def make_app(engine):
    from fastapi import FastAPI

    app = FastAPI()

    @app.get("/names")
    def names_route(ids: str = "1,2"):
        return names(engine, [int(i) for i in ids.split(",")])

    return app
"""

CONFTEST = """
import asyncio

import httpx
import pytest
from poolwatch import PoolWatch
from shop import make_app, make_engine


@pytest.fixture
def watch():
    watch = PoolWatch()
    yield watch
    watch.uninstrument()


@pytest.fixture
def engine(watch):
    engine = make_engine()
    watch.instrument_sqlalchemy(engine)
    yield engine
    engine.dispose()


@pytest.fixture
def client(watch, engine):
    app = make_app(engine)
    watch.instrument_app(app)

    def get(path, **params):
        async def call():
            transport = httpx.ASGITransport(app=app)
            async with httpx.AsyncClient(transport=transport, base_url="http://app") as c:
                return (await c.get(path, params=params)).json()

        return asyncio.run(call())

    return get
"""

USER_SUITE = """
import pytest
from sqlalchemy import text
from shop import names


def test_loop(client):
    assert client("/names") == ["a", "b"]


def test_one_query(engine):
    with engine.connect() as conn:
        assert len(conn.execute(text("SELECT name FROM item")).all()) == 3


@pytest.mark.allow_nplusone
def test_accepted_loop(client):
    client("/names", ids="1,2,3")


def test_calls_the_apps_helper_itself(engine):  # the test drives it: the test's own doing
    assert names(engine, [1, 2, 3]) == ["a", "b", "c"]


def test_checks_rows_one_by_one_itself(engine):
    with engine.connect() as conn:  # the test's own checking, not the app's
        for i in (1, 2, 3):
            assert conn.execute(text("SELECT name FROM item WHERE id = :id"), {"id": i}).scalar()


@pytest.mark.max_queries(1)
def test_two_different_queries(engine):
    with engine.connect() as conn:
        conn.execute(text("SELECT 1 FROM item"))
        conn.execute(text("SELECT 2 FROM item"))


def test_own_failure_is_reported_as_such(client):
    client("/names")
    assert False, "the test's own assertion"
"""

INI = "[pytest]\nasyncio_default_fixture_loop_scope = function\n"


@pytest.fixture
def suite(pytester: pytest.Pytester) -> pytest.Pytester:
    pytester.makepyfile(test_user=USER_SUITE, shop=APP, conftest=CONFTEST)
    pytester.makeini(INI)
    pytester.syspathinsert()
    return pytester


def test_default_reports_at_the_end_and_fails_nothing_but_query_limits(
    suite: pytest.Pytester,
) -> None:
    result = suite.runpytest("-p", "no:cacheprovider")
    result.assert_outcomes(passed=5, failed=2)
    result.stdout.fnmatch_lines(
        [
            "*expected at most 1 queries, got 2 queries:*",
            "*the test's own assertion*",
            "*- poolwatch: 1 N+1 or duplicate queries -*",
            "test_user.py::test_loop: nplusone on GET /names: 2 x "
            "'select ... from item where id = ?'* at shop.py:3? in make_app.<locals>.names_route"
            " -> shop.py:1? in names*",
            "(reported only; --poolwatch-nplusone=raise*",
        ]
    )
    assert "test_checks_rows_one_by_one_itself:" not in result.stdout.str()
    assert "test_calls_the_apps_helper_itself:" not in result.stdout.str()


def test_raise_fails_the_test_that_ran_the_loop(suite: pytest.Pytester) -> None:
    result = suite.runpytest("--poolwatch-nplusone=raise")
    result.assert_outcomes(passed=4, failed=3)
    result.stdout.fnmatch_lines(
        [
            "*NPlusOneError: 1 query finding(s) in test_user.py::test_loop:",
            "*- nplusone on GET /names: 2 x 'select ... from item where id = ?'*"
            " at shop.py:3? in make_app.<locals>.names_route -> shop.py:1? in names*",
        ]
    )


def test_the_tests_own_statements_are_judged_only_when_asked(suite: pytest.Pytester) -> None:
    suite.makeini(INI + "poolwatch_nplusone = raise\npoolwatch_judge_test_code = true\n")
    result = suite.runpytest()
    result.assert_outcomes(passed=2, failed=5)
    result.stdout.fnmatch_lines(
        [
            "FAILED test_user.py::test_calls_the_apps_helper_itself - *",
            "FAILED test_user.py::test_checks_rows_one_by_one_itself - *",
        ],
        consecutive=False,
    )


def test_warn_mode_warns_instead(suite: pytest.Pytester) -> None:
    result = suite.runpytest("--poolwatch-nplusone=warn", "-W", "default")
    result.assert_outcomes(passed=5, failed=2)
    # One warning, the loop's (a pytest without pytest-asyncio adds its own about the
    # ini's asyncio option: not the plugin's).
    assert result.stdout.str().count("NPlusOneWarning: ") == 1
    result.stdout.fnmatch_lines(["*NPlusOneWarning*test_loop*"])


def test_off_mode_and_ini_option(suite: pytest.Pytester) -> None:
    suite.runpytest("--poolwatch-nplusone=off").assert_outcomes(passed=5, failed=2)
    suite.makeini(INI + "poolwatch_nplusone = raise\n")
    suite.runpytest().assert_outcomes(passed=4, failed=3)


def test_threshold_option(suite: pytest.Pytester) -> None:
    result = suite.runpytest("--poolwatch-nplusone=raise", "--poolwatch-threshold=3")
    result.assert_outcomes(passed=5, failed=2)


def test_a_session_without_an_instrumented_pool_says_so(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(test_plain="def test_nothing_instrumented():\n    assert True\n")
    pytester.makeini(INI)
    result = pytester.runpytest()
    result.assert_outcomes(passed=1)
    result.stdout.fnmatch_lines(["*no statement of a pool instrumented by poolwatch ran*"])


def test_bad_options_fail_fast(suite: pytest.Pytester) -> None:
    suite.makeini(INI + "poolwatch_nplusone = loud\n")
    result = suite.runpytest()
    result.stderr.fnmatch_lines(["*poolwatch_nplusone='loud': must be one of*"])
    assert result.ret == pytest.ExitCode.USAGE_ERROR


REPORTS = """
import time

from sqlalchemy import text


def make_reports(engine):
    from fastapi import FastAPI

    app = FastAPI()

    @app.get("/report")
    def report():
        with engine.connect() as conn:
            conn.execute(text("SELECT name FROM item WHERE id = 1"))
            time.sleep(0.02)  # a call of another service, the connection in hand
            return conn.execute(text("SELECT name FROM item WHERE id = 2")).scalar()

    return app
"""

HELD_SUITE = """
import asyncio

import httpx
from reports import make_reports


def test_report(watch, engine):
    app = make_reports(engine)
    watch.instrument_app(app)

    async def call():
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://app") as c:
            return (await c.get("/report")).json()

    assert asyncio.run(call()) == "b"
"""


def test_connections_held_while_idle_are_listed_and_never_fail(suite: pytest.Pytester) -> None:
    suite.makepyfile(reports=REPORTS, test_held=HELD_SUITE)
    result = suite.runpytest("test_held.py", "--poolwatch-nplusone=raise")
    result.assert_outcomes(passed=1)
    result.stdout.fnmatch_lines(
        [
            "*- poolwatch: 1 connection held while idle, at 1 place -*",
            "test_held.py::test_report: held_idle on GET /report: a connection of pool main "
            "held * ms, * ms of it running no statement (statements: * ms) inside a "
            "transaction, waiting on a sleep, time.sleep, between reports.py:1? in "
            "make_reports.<locals>.report and reports.py:1? in make_reports.<locals>.report. "
            "Release the connection before time.sleep *",
            "(listed only; --poolwatch-fail-on=held_idle or poolwatch_fail_on = held_idle "
            "makes them fail the tests that show them)",
        ]
    )


def test_connections_held_while_idle_fail_the_test_when_asked(suite: pytest.Pytester) -> None:
    suite.makepyfile(reports=REPORTS, test_held=HELD_SUITE)
    result = suite.runpytest("test_held.py", "--poolwatch-fail-on=held_idle")
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(
        [
            "1 finding(s) of a kind that fails tests (poolwatch_fail_on = held_idle) in "
            "test_held.py::test_report:",
            "  - held_idle on GET /report: * waiting on a sleep, time.sleep, between *",
        ]
    )


@pytest.mark.parametrize(
    ("version", "runs"),
    [("6.2.5", False), ("7.0.0", True), ("7.2.1", True), ("8.0.0rc1", True), ("9.2.0", True)],
)
def test_the_plugin_runs_from_pytest_7(version: str, runs: bool) -> None:
    from poolwatch.pytest_plugin import supported

    assert supported(version) is runs


def test_on_an_older_pytest_the_plugin_warns_once_and_stays_off() -> None:
    # What pytest 6 lacks (StashKey among others) must not break the start-up of a suite
    # that has poolwatch installed: the plugin is imported, warns, and does nothing.
    script = (
        "import warnings, pytest\n"
        "pytest.__version__ = '6.2.5'\n"
        "del pytest.StashKey\n"
        "warnings.simplefilter('always')\n"
        "with warnings.catch_warnings(record=True) as seen:\n"
        "    import poolwatch.pytest_plugin as plugin\n"
        "assert not plugin._SUPPORTED\n"
        "print(len(seen)); print(seen[0].message)\n"
    )
    import subprocess
    import sys

    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, check=False, timeout=60
    )
    assert done.returncode == 0, done.stderr
    count, message = done.stdout.strip().split("\n", 1)
    assert count == "1"
    assert message.startswith("poolwatch's pytest plugin needs pytest 7.0 or newer, found 6.2.5")
