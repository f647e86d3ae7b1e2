"""pytest plugin: N+1 and duplicate queries of the code under test (installed with poolwatch).

Every test runs inside :func:`poolwatch.testing.capture`; what it finds is handled by
``--poolwatch-nplusone`` (or the ``poolwatch_nplusone`` ini option):

* ``report`` (default): a summary section at the end of the session lists each finding
  with the test that caused it; the exit status is left alone, as a metrics agent added
  to an app must not turn its suite red;
* ``raise``: the test fails with :class:`~poolwatch.NPlusOneError`, listing each N+1 and
  duplicate query with its call site and the fix;
* ``warn``: a :class:`~poolwatch.NPlusOneWarning` per test instead;
* ``off``: nothing.

Statements that the test's own code issues (its module, ``conftest.py``: whatever
``python_files`` names), setting up data or checking it, are not judged; the app's are.
``poolwatch_judge_test_code = true`` judges them too. When no statement of an instrumented
pool ran in the whole session, the summary says so rather than passing in silence.

It needs pytest 7.0 or newer (and any pluggy that pytest brings, 1.0 included); on an
older pytest it warns once and does nothing.

Markers: ``@pytest.mark.max_queries(n)`` fails a test that runs more than ``n`` data
statements (in every mode); ``@pytest.mark.allow_nplusone`` accepts the N+1s of one test.
Only statements of instrumented pools are seen (``PoolWatch().instrument_*``).
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Generator
from fnmatch import fnmatchcase
from typing import Any

import pytest

from poolwatch.errors import NPlusOneError, NPlusOneWarning
from poolwatch.events import DUPLICATE, HELD_IDLE, NPLUSONE, Finding
from poolwatch.testing import capture

_MODES = ("off", "report", "warn", "raise")
_DEFAULT_MODE = "report"
MINIMUM_PYTEST = (7, 0)  # pytest.StashKey, pytest.Parser/Config/Item as public names


def supported(version: str) -> bool:
    """Whether a pytest of this version can run the plugin."""
    parts = []
    for part in version.split(".")[:2]:
        digits = "".join(c for c in part if c.isdigit())
        parts.append(int(digits) if digits else 0)
    return tuple(parts) >= MINIMUM_PYTEST


# An older pytest gets one warning and a plugin that does nothing: a plugin that broke
# start-up would break the whole suite of every app that installs poolwatch.
_SUPPORTED = supported(pytest.__version__)
if _SUPPORTED:
    _FINDINGS = pytest.StashKey[list[tuple[str, Finding]]]()
    _STATEMENTS = pytest.StashKey[list[int]]()  # statements seen in the session, in one cell
    _HELD = pytest.StashKey[list[tuple[str, Finding]]]()  # held_idle findings: listed only
else:
    warnings.warn(
        f"poolwatch's pytest plugin needs pytest {'.'.join(map(str, MINIMUM_PYTEST))} or "
        f"newer, found {pytest.__version__}: the plugin is off (the app's metrics are not "
        "affected)",
        stacklevel=1,
    )


def pytest_addoption(parser: pytest.Parser) -> None:
    if not _SUPPORTED:
        return
    group = parser.getgroup("poolwatch", "poolwatch query checks")
    group.addoption(
        "--poolwatch-nplusone",
        choices=_MODES,
        default=None,
        help="what to do when a test runs an N+1 or duplicate query: report them at the "
        "end (default), raise (fail the test), warn, or off",
    )
    group.addoption(
        "--poolwatch-threshold",
        type=int,
        default=None,
        help="statements from one call site that make an N+1 in a test (default: 2)",
    )
    parser.addini(
        "poolwatch_nplusone", "off, report, warn or raise (default report)", default=_DEFAULT_MODE
    )
    parser.addini("poolwatch_threshold", "N+1 threshold in tests (default 2)", default="2")
    parser.addini(
        "poolwatch_judge_test_code",
        "also judge the statements the tests and fixtures issue themselves (default false)",
        type="bool",
        default=False,
    )


def pytest_configure(config: pytest.Config) -> None:
    if not _SUPPORTED:
        return
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
    config.stash[_FINDINGS] = []
    config.stash[_HELD] = []
    config.stash[_STATEMENTS] = [0]


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


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_call(item: pytest.Item) -> Generator[None, Any, None]:
    # An old-style wrapper: pytest 7.0 and pluggy 1.0 (what apps pin) know no other. A
    # finding that fails the test is handed to pytest through the call's outcome (pluggy
    # 1.1+; pluggy 1.0 takes it raised from here, and newer ones warn when it is raised).
    __tracebackhide__ = True  # the failure is the test's N+1, not this hook
    if not _SUPPORTED:
        yield
        return
    mode = _mode(item.config)
    limit_marker = item.get_closest_marker("max_queries")
    if item.get_closest_marker("allow_nplusone") is not None:
        mode = "off"
    if mode == "off" and limit_marker is None:
        yield
        return
    with capture(name=item.nodeid, threshold=_threshold(item.config)) as captured:
        outcome = yield
    if _raised(outcome):  # the test failed on its own: that is what it reports
        return
    try:
        _judge(item, mode, limit_marker, captured)
    except Exception as exc:
        force = getattr(outcome, "force_exception", None)
        if force is None:
            raise
        force(exc)


def _raised(outcome: Any) -> bool:
    """Whether the test call ended in an exception (``excinfo`` in pluggy 1.0, also
    ``exception`` later)."""
    return getattr(outcome, "excinfo", None) is not None


def _judge(item: pytest.Item, mode: str, limit_marker: pytest.Mark | None, captured: Any) -> None:
    """What one test's statements say: raises to fail the test, or records for the
    summary."""
    item.config.stash[_STATEMENTS][0] += len(captured.queries)
    if limit_marker is not None:
        captured.assert_max_queries(_limit(limit_marker))
    judged = _judged(item.config)
    item.config.stash[_HELD].extend(
        (item.nodeid, f) for f in captured.findings if f.kind == HELD_IDLE and judged(f)
    )
    serious = [f for f in captured.findings if f.kind in (NPLUSONE, DUPLICATE) and judged(f)]
    if not serious or mode == "off":
        return
    if mode == "raise":
        raise NPlusOneError(serious, where=item.nodeid)
    if mode == "warn":
        warnings.warn(NPlusOneWarning(str(NPlusOneError(serious, where=item.nodeid))), stacklevel=1)
    item.config.stash[_FINDINGS].extend((item.nodeid, f) for f in serious)


def pytest_terminal_summary(terminalreporter: Any, config: pytest.Config) -> None:
    if not _SUPPORTED or _mode(config) == "off" or _FINDINGS not in config.stash:
        return
    findings = config.stash[_FINDINGS]
    if not config.stash[_STATEMENTS][0]:
        terminalreporter.write_sep("-", "poolwatch")
        terminalreporter.write_line(
            "no statement of a pool instrumented by poolwatch ran in these tests, so none "
            "was checked for N+1 or duplicate queries: run the suite as "
            "`poolwatch run -- python -m pytest ...` (every engine and Tortoise connection "
            "the app creates is instrumented), or instrument the app's engine or Tortoise "
            "(PoolWatch().instrument_*) where the tests create the app"
        )
        return
    held = config.stash[_HELD]
    if held:
        places = _places(held)
        terminalreporter.write_sep(
            "-",
            f"poolwatch: {len(held)} connections held while idle, at {len(places)} places",
        )
        for nodeid, finding, more in places:
            others = f" (and {more} more)" if more else ""
            terminalreporter.write_line(f"{nodeid}{others}: {finding}")
        terminalreporter.write_line("(reported only: never a failure)")
    if not findings:
        return
    terminalreporter.write_sep("-", f"poolwatch: {len(findings)} N+1 or duplicate queries")
    for nodeid, finding in findings:
        terminalreporter.write_line(f"{nodeid}: {finding}")
    terminalreporter.write_line(
        "(reported only; --poolwatch-nplusone=raise or poolwatch_nplusone = raise makes "
        "them fail the tests that ran them, @pytest.mark.allow_nplusone accepts one test's)"
    )


def _places(held: list[tuple[str, Finding]]) -> list[tuple[str, Finding, int]]:
    """held_idle findings by place (route, the lines either side of the wait): the first
    test that showed it, its longest wait, and how many more times it was seen."""
    by_place: dict[tuple[str, str, str, bool], list[tuple[str, Finding]]] = {}
    for nodeid, finding in held:
        key = (finding.where, finding.before, finding.call_path, finding.transaction)
        by_place.setdefault(key, []).append((nodeid, finding))
    return [
        (seen[0][0], max((f for _, f in seen), key=lambda f: f.duration), len(seen) - 1)
        for seen in by_place.values()
    ]


def _judged(config: pytest.Config) -> Callable[[Finding], bool]:
    """Whether a finding is the app's, not the test's own doing.

    The outermost application frame of its call path decides. A test or a fixture that
    calls the app's repository or service to set up or check data starts the path in a
    test file: the test's doing. A request, or a task the app starts, starts it in the
    app (the framework's frames between the test and the endpoint end the path).
    """
    if config.getini("poolwatch_judge_test_code"):
        return lambda finding: True
    patterns = [*config.getini("python_files"), "conftest.py"]

    def judged(finding: Finding) -> bool:
        outermost = finding.path.split(" -> ", 1)[0]
        file = outermost.split(":", 1)[0].replace("\\", "/").rsplit("/", 1)[-1]
        return not any(fnmatchcase(file, pattern) for pattern in patterns)

    return judged


def _limit(marker: pytest.Mark) -> int:
    limit = marker.args[0] if marker.args else marker.kwargs.get("n")
    if isinstance(limit, bool) or not isinstance(limit, int) or limit < 0:
        raise pytest.UsageError(f"max_queries({limit!r}): needs a whole number, 0 or more")
    return limit
