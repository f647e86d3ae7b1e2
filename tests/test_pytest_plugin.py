"""The pytest plugin, run on a small user suite: it fails a test that runs an N+1."""

from __future__ import annotations

import pytest

USER_SUITE = """
import pytest
from sqlalchemy import create_engine, text
from poolwatch import PoolWatch


@pytest.fixture
def engine():
    engine = create_engine("sqlite://")
    watch = PoolWatch()
    watch.instrument_sqlalchemy(engine)
    with engine.begin() as conn:
        conn.execute(text("CREATE TABLE item (id INTEGER PRIMARY KEY, name TEXT)"))
        conn.execute(text("INSERT INTO item VALUES (1, 'a'), (2, 'b'), (3, 'c')"))
    yield engine
    watch.uninstrument()
    engine.dispose()


def names(engine, ids):
    with engine.connect() as conn:
        return [
            conn.execute(text("SELECT name FROM item WHERE id = :id"), {"id": i}).scalar()
            for i in ids
        ]


def test_loop(engine):
    assert names(engine, [1, 2]) == ["a", "b"]


def test_one_query(engine):
    with engine.connect() as conn:
        assert len(conn.execute(text("SELECT name FROM item")).all()) == 3


@pytest.mark.allow_nplusone
def test_accepted_loop(engine):
    names(engine, [1, 2, 3])


@pytest.mark.max_queries(1)
def test_two_different_queries(engine):
    with engine.connect() as conn:
        conn.execute(text("SELECT 1 FROM item"))
        conn.execute(text("SELECT 2 FROM item"))


def test_own_failure_is_reported_as_such(engine):
    names(engine, [1, 2])
    assert False, "the test's own assertion"
"""


INI = "[pytest]\nasyncio_default_fixture_loop_scope = function\n"


@pytest.fixture
def suite(pytester: pytest.Pytester) -> pytest.Pytester:
    pytester.makepyfile(test_user=USER_SUITE)
    pytester.makeini(INI)
    return pytester


def test_default_raise_fails_the_loop_and_the_query_limit(suite: pytest.Pytester) -> None:
    result = suite.runpytest("-p", "no:cacheprovider")
    result.assert_outcomes(passed=2, failed=3)
    result.stdout.fnmatch_lines(
        [
            "*NPlusOneError: 1 query finding(s) in test_user.py::test_loop:",
            "*- nplusone on test_user.py::test_loop: 2 x 'select name from item where id = ?'*"
            " at test_user.py:2? in names*",
            "*expected at most 1 queries, got 2 queries:*",
            "*the test's own assertion*",
        ]
    )


def test_warn_mode_warns_instead(suite: pytest.Pytester) -> None:
    result = suite.runpytest("--poolwatch-nplusone=warn", "-W", "default")
    result.assert_outcomes(passed=3, failed=2, warnings=1)
    result.stdout.fnmatch_lines(["*NPlusOneWarning*test_loop*"])


def test_off_mode_and_ini_option(suite: pytest.Pytester) -> None:
    suite.runpytest("--poolwatch-nplusone=off").assert_outcomes(passed=3, failed=2)
    suite.makeini(INI + "poolwatch_nplusone = off\n")
    suite.runpytest().assert_outcomes(passed=3, failed=2)


def test_threshold_option(suite: pytest.Pytester) -> None:
    suite.runpytest("--poolwatch-threshold=3").assert_outcomes(passed=3, failed=2)


def test_bad_options_fail_fast(suite: pytest.Pytester) -> None:
    suite.makeini(INI + "poolwatch_nplusone = loud\n")
    result = suite.runpytest()
    result.stderr.fnmatch_lines(["*poolwatch_nplusone='loud': must be one of*"])
    assert result.ret == pytest.ExitCode.USAGE_ERROR
