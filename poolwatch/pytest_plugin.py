"""pytest plugin: the N+1s and other findings of the code under test (installed with poolwatch).

Every test runs inside :func:`poolwatch.testing.capture`; its N+1 and duplicate queries
are handled by ``--poolwatch-nplusone`` (or the ``poolwatch_nplusone`` ini option):

* ``report`` (default): a summary section at the end of the session lists each finding
  with the test that caused it; the exit status is left alone, as a metrics agent added
  to an app must not turn its suite red;
* ``raise``: the test fails with :class:`~poolwatch.NPlusOneError`, listing each N+1 and
  duplicate query with its call site and the fix;
* ``warn``: a :class:`~poolwatch.NPlusOneWarning` per test instead;
* ``off``: nothing.

The other findings are listed at the end in every mode but ``off``, a section per kind
and one entry per place with the first test that showed it and how many more did:
connections held while idle (``held_idle``, with what they waited on), per-row writes in
a loop (``bulk_write``, with the loop's line and the ORM's bulk call) and eager loads that
nothing read (``unused_eager_load``, with the query's call path and the option to
remove). They are advice on how the code uses the pool, often followed on purpose (a loop
of a few writes reads better than a bulk call), so they fail no test unless asked:
``--poolwatch-fail-on=bulk_write,unused_eager_load`` (or the ``poolwatch_fail_on`` ini
option) fails the tests that show the kinds it names, in every mode.

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
from typing import Any, NamedTuple

import pytest

from poolwatch.errors import NPlusOneError, NPlusOneWarning
from poolwatch.events import (
    BULK_WRITE,
    DUPLICATE,
    HELD_IDLE,
    NPLUSONE,
    UNUSED_EAGER_LOAD,
    Finding,
)
from poolwatch.pools.reader import WaitReader
from poolwatch.testing import capture

_MODES = ("off", "report", "warn", "raise")
_DEFAULT_MODE = "report"
LISTED_KINDS = (HELD_IDLE, BULK_WRITE, UNUSED_EAGER_LOAD)
"""The kinds listed at the end, a section each, most serious first; they fail no test
unless ``poolwatch_fail_on`` names them."""
_SECTIONS = {
    HELD_IDLE: ("connection held while idle", "connections held while idle"),
    BULK_WRITE: ("per-row write", "per-row writes"),
    UNUSED_EAGER_LOAD: ("unused eager load", "unused eager loads"),
}
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
    # Findings listed at the end and never raised, by kind: (test, finding) each.
    _LISTED = pytest.StashKey[dict[str, list[tuple[str, Finding]]]]()
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
    group.addoption(
        "--poolwatch-fail-on",
        default=None,
        metavar="KINDS",
        help="fail the tests that show these kinds of finding, listed at the end otherwise: "
        f"any of {', '.join(LISTED_KINDS)}, comma-separated (default: none)",
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
    parser.addini(
        "poolwatch_fail_on",
        f"kinds of finding that fail the tests showing them: {', '.join(LISTED_KINDS)}, "
        "comma-separated (default: none, they are listed)",
        default="",
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
    _fail_on(config)  # a kind misspelt fails the session, not silently nothing
    config.stash[_FINDINGS] = []
    listed: dict[str, list[tuple[str, Finding]]] = {kind: [] for kind in LISTED_KINDS}
    config.stash[_LISTED] = listed
    config.stash[_STATEMENTS] = [0]


def _mode(config: pytest.Config) -> str:
    option = config.getoption("--poolwatch-nplusone")
    return str(option if option is not None else config.getini("poolwatch_nplusone")).strip()


def _fail_on(config: pytest.Config) -> frozenset[str]:
    """The kinds of listed finding that fail the tests showing them."""
    option = config.getoption("--poolwatch-fail-on")
    raw = str(option if option is not None else config.getini("poolwatch_fail_on"))
    kinds = frozenset(kind.strip() for kind in raw.replace("\n", ",").split(",") if kind.strip())
    unknown = sorted(kinds - set(LISTED_KINDS))
    if unknown:
        raise pytest.UsageError(
            f"poolwatch_fail_on={raw!r}: {', '.join(unknown)} is not a kind it takes; "
            f"it takes {', '.join(LISTED_KINDS)} (N+1 and duplicate queries fail with "
            "--poolwatch-nplusone=raise)"
        )
    return kinds


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
    if mode == "off" and limit_marker is None and not _fail_on(item.config):
        yield
        return
    with capture(name=item.nodeid, threshold=_threshold(item.config)) as captured:
        outcome = yield
    if _raised(outcome):  # the test failed on its own: that is what it reports
        return
    try:
        _judge(item, mode, limit_marker, captured)
    except (Exception, pytest.fail.Exception) as exc:
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
    __tracebackhide__ = True  # the failure is the test's findings, not this function
    item.config.stash[_STATEMENTS][0] += len(captured.queries)
    if limit_marker is not None:
        captured.assert_max_queries(_limit(limit_marker))
    judged = _judged(item.config)
    fail_on = _fail_on(item.config)
    listed = item.config.stash[_LISTED]
    failing = []
    for finding in captured.findings:
        if finding.kind in fail_on and judged(finding):
            failing.append(finding)
        elif finding.kind in listed and judged(finding):
            listed[finding.kind].append((item.nodeid, finding))
    serious = [f for f in captured.findings if f.kind in (NPLUSONE, DUPLICATE) and judged(f)]
    if mode == "raise" and serious:
        raise NPlusOneError([*serious, *failing], where=item.nodeid)
    if failing:
        kinds = ",".join(kind for kind in LISTED_KINDS if kind in fail_on)
        raise pytest.fail.Exception(
            f"{len(failing)} finding(s) of a kind that fails tests "
            f"(poolwatch_fail_on = {kinds}) in {item.nodeid}:\n"
            + "\n".join(f"  - {finding}" for finding in failing),
            pytrace=False,
        )
    if not serious or mode == "off":
        return
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
    # The most serious first: what fails a test when asked, then what can empty the pool,
    # then what only costs time.
    if findings:
        terminalreporter.write_sep("-", f"poolwatch: {len(findings)} N+1 or duplicate queries")
        for nodeid, finding in findings:
            terminalreporter.write_line(f"{nodeid}: {finding}")
        terminalreporter.write_line(
            "(reported only; --poolwatch-nplusone=raise or poolwatch_nplusone = raise makes "
            "them fail the tests that ran them, @pytest.mark.allow_nplusone accepts one test's)"
        )
    reader = WaitReader()  # the loops of the per-row writes, read from the source
    for kind in LISTED_KINDS:
        seen = config.stash[_LISTED][kind]
        if not seen:
            continue
        places = _places(seen)
        what = _plural(len(seen), *_SECTIONS[kind])
        where = _plural(len(places), "place", "places")
        terminalreporter.write_sep("-", f"poolwatch: {what}, at {where}")
        for place in places:
            terminalreporter.write_line(str(place))
            loop = reader.loop_of(place.finding.path) if kind == BULK_WRITE else ""
            if loop:
                terminalreporter.write_line(f"    the loop: {loop}")
        terminalreporter.write_line(
            f"(listed only; --poolwatch-fail-on={kind} or poolwatch_fail_on = {kind} makes "
            "them fail the tests that show them)"
        )


def _plural(count: int, one: str, many: str) -> str:
    return f"{count} {one if count == 1 else many}"


class Place(NamedTuple):
    """One place of the code a kind of finding points at, over the whole session."""

    nodeid: str
    """The first test that showed it."""
    finding: Finding
    """Its worst occurrence: the longest idle time, the most rows or loads."""
    tests: int
    """How many tests showed it, the first included."""

    def __str__(self) -> str:
        more = self.tests - 1
        others = f" (and {_plural(more, 'more test', 'more tests')})" if more else ""
        return f"{self.nodeid}{others}: {self.finding}"


def _place_of(finding: Finding) -> tuple[object, ...]:
    """What makes two findings of one kind the same place: the request, the lines (and
    for statements, their shape and pool; for eager loads, the relations)."""
    if finding.kind == HELD_IDLE:
        return (finding.where, finding.before, finding.call_path, finding.transaction)
    return (finding.where, finding.fingerprint, finding.path, finding.pool, finding.relations)


def _places(seen: list[tuple[str, Finding]]) -> list[Place]:
    """Findings of one kind by place, in the order first seen: the first test that showed
    each, its worst occurrence, and how many tests showed it."""
    by_place: dict[tuple[object, ...], list[tuple[str, Finding]]] = {}
    for nodeid, finding in seen:
        by_place.setdefault(_place_of(finding), []).append((nodeid, finding))
    return [
        Place(found[0][0], max((f for _, f in found), key=_worst), len({n for n, _ in found}))
        for found in by_place.values()
    ]


def _worst(finding: Finding) -> tuple[float, float]:
    if finding.kind == HELD_IDLE:
        return (finding.duration, finding.held)
    return (finding.count, finding.duration)


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
