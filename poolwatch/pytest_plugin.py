"""pytest plugin: fail a test that runs an N+1 (installed with poolwatch, on by default).

Every test runs inside :func:`poolwatch.testing.capture`; what it finds is handled by
``--poolwatch-nplusone`` (or the ``poolwatch_nplusone`` ini option):

* ``raise`` (default): the test fails with :class:`~poolwatch.NPlusOneError`, listing
  each N+1 and duplicate query with its call site and the fix;
* ``warn``: a :class:`~poolwatch.NPlusOneWarning` instead;
* ``off``: nothing.

Markers: ``@pytest.mark.max_queries(n)`` fails a test that runs more than ``n`` data
statements; ``@pytest.mark.allow_nplusone`` accepts the N+1s of one test.
Only statements of instrumented pools are seen (``PoolWatch().instrument_*``).
"""

from __future__ import annotations

import warnings
from collections.abc import Generator
from typing import Any

import pytest

from poolwatch.errors import NPlusOneError, NPlusOneWarning
from poolwatch.events import DUPLICATE, NPLUSONE
from poolwatch.testing import capture

_MODES = ("off", "warn", "raise")


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("poolwatch", "poolwatch query checks")
    group.addoption(
        "--poolwatch-nplusone",
        choices=_MODES,
        default=None,
        help="what to do when a test runs an N+1 or duplicate query (default: raise)",
    )
    group.addoption(
        "--poolwatch-threshold",
        type=int,
        default=None,
        help="statements from one call site that make an N+1 in a test (default: 2)",
    )
    parser.addini("poolwatch_nplusone", "off, warn or raise (default raise)", default="raise")
    parser.addini("poolwatch_threshold", "N+1 threshold in tests (default 2)", default="2")


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", "max_queries(n): fail the test if it runs more than n database statements"
    )
    config.addinivalue_line(
        "markers", "allow_nplusone: do not fail the test on N+1 or duplicate queries"
    )
    mode = _mode(config)
    if mode not in _MODES:
        raise pytest.UsageError(f"poolwatch_nplusone={mode!r}: must be one of {_MODES}")
    threshold = _threshold(config)
    if threshold < 2:
        raise pytest.UsageError(f"poolwatch_threshold={threshold!r}: must be at least 2")


def _mode(config: pytest.Config) -> str:
    option = config.getoption("--poolwatch-nplusone")
    return str(option if option is not None else config.getini("poolwatch_nplusone")).strip()


def _threshold(config: pytest.Config) -> int:
    option = config.getoption("--poolwatch-threshold")
    raw = option if option is not None else config.getini("poolwatch_threshold")
    try:
        return int(raw)
    except ValueError:
        raise pytest.UsageError(f"poolwatch_threshold={raw!r}: must be a whole number") from None


@pytest.hookimpl(wrapper=True)
def pytest_runtest_call(item: pytest.Item) -> Generator[None, Any, Any]:
    __tracebackhide__ = True  # the failure is the test's N+1, not this hook
    mode = _mode(item.config)
    limit_marker = item.get_closest_marker("max_queries")
    if item.get_closest_marker("allow_nplusone") is not None:
        mode = "off"
    if mode == "off" and limit_marker is None:
        return (yield)
    with capture(name=item.nodeid, threshold=_threshold(item.config)) as captured:
        result = yield
    if limit_marker is not None:
        captured.assert_max_queries(_limit(limit_marker))
    serious = [f for f in captured.findings if f.kind in (NPLUSONE, DUPLICATE)]
    if serious and mode == "raise":
        raise NPlusOneError(serious, where=item.nodeid)
    if serious and mode == "warn":
        warnings.warn(NPlusOneWarning(str(NPlusOneError(serious, where=item.nodeid))), stacklevel=1)
    return result


def _limit(marker: pytest.Mark) -> int:
    limit = marker.args[0] if marker.args else marker.kwargs.get("n")
    if isinstance(limit, bool) or not isinstance(limit, int) or limit < 0:
        raise pytest.UsageError(f"max_queries({limit!r}): needs a whole number, 0 or more")
    return limit
