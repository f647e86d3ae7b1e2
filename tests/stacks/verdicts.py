"""The checks: what a cell must show against the control of its stack, and the table.

What a cell must show (:func:`failures`), against the control of its stack:

* the app's errors are the control's (both none: an abandoned request is no error);
* once traffic stopped, poolwatch's gauges equal the driver's counts, nothing waits, and
  poolwatch's drift is 0; it counted no internal error;
* the login's sessions never exceed its limit, and, under autosize, neither does the limit;
  autosize grew when the clients queued, and read the budget where there is one to read;
* asyncio reported no more futures nobody retrieved than the control (with some slack:
  drivers leave a few behind abandoned requests on their own).

How the app's errors are compared. The control is one sample of what the app does
without poolwatch, and on some stacks that sample varies a lot from run to run. On SQLite
one writer at a time holds the database's lock; when a connection waits for it until its
busy timeout (30 s), the connections behind it wait too, the pool runs dry, and every
request arriving meanwhile waits for the pool until its own timeout: one stall of the
database is a few "database is locked" and as many "QueuePool limit ... timed out" as
there were requests in flight, tens to hundreds. No connection is lost: once traffic
stops, the pool has them all back (the driver's count of connections in use is 0, a check
every run must pass). With SQLite's default deferred transactions the async aiosqlite app
met such stalls in 12 of 14 runs without poolwatch (0 to 728 pool timeouts) and in 13 of
14 with it (0 to 786), as often and as long either way; the counts of one run on either
side say little. (The app now begins its transactions immediate, see :mod:`.app`, and
stalls became rare; rare is not never.)

Some of the app's errors are rare enough that three runs of the control miss them. On
SQLite, a request cancelled while its ``SELECT`` runs inside a transaction leaves a
connection SQLAlchemy then closes (it invalidates a connection a cancellation
interrupted); the statement, still held by the cancelled task's traceback, keeps the
closed connection alive inside SQLite with its write lock (``sqlite3_close_v2`` defers
the close until every statement is finalized) until the garbage collector frees that
traceback. Every writer meanwhile waits up to its busy timeout (30 s) and fails with
"database is locked". With three in ten requests abandoned, the app met that stall
without poolwatch in 2 of 20 runs, with poolwatch in 0 of 20 and with autosize in 1 of
19 (plus one stall that cleared before the timeout); one control run rarely sees it.
Hence, for the app's errors:

* a cell with an error the control did not have asks the control again, up to twice
  (:func:`ask_the_control_again`), keeping the most of each kind any control run had;
* a cell whose one problem is app errors, of a kind no control run showed or many more
  (more than twice the most a control run had, and 3) of a kind it did, runs again, up
  to twice (:func:`ask_the_cells_again`); a run that passes every check ends it. An error
  poolwatch causes comes back in every run with it; one met by chance does not come back
  on cue. The cell fails if no run of it passes.

Every other check holds for every run of a cell, the first included. Most stacks' control
has no error at all: there any app error that comes back in each run of a cell fails it.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from tests.stacks.stacks import LOGIN_LIMIT

__all__ = [
    "ask_the_cells_again",
    "ask_the_control_again",
    "failures",
    "line",
    "problems_of",
    "table",
]

CONTROL_RERUNS = 2
CELL_RERUNS = 2


def ask_the_control_again(
    results: list[dict[str, Any]],
    rerun: Callable[[], dict[str, Any]],
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
        again = rerun()
        log(line(again) + " (the control again)")
        if "crash" in again:
            return
        merged = dict(control.get("errors", {}))
        for kind, count in again.get("errors", {}).items():
            merged[kind] = max(merged.get(kind, 0), count)
        control["errors"] = merged
        control["control_runs"] = control.get("control_runs", 1) + 1


def ask_the_cells_again(
    results: list[dict[str, Any]],
    rerun: Callable[[str, str], dict[str, Any]],
    log: Callable[[str], None],
) -> None:
    """Run a cell again, up to twice, while its one problem is app errors beyond the
    control's (a kind it never had, or many more of one it had); its runs are kept under
    ``"again"``.

    ``rerun(wiring, setup)`` runs the cell once more. A run with every check passed ends
    the asking: the excess did not come back (see the module's docstring). Call it after
    :func:`ask_the_control_again`, so that the control's most is known.
    """
    control = results[0]
    if "crash" in control:
        return
    for result in results[1:]:
        if "crash" in result or not _asks_again(result, control):
            continue
        for _ in range(CELL_RERUNS):
            again = rerun(result["wiring"], result["setup"])
            result.setdefault("again", []).append(again)
            log(line(again) + " (the cell again)")
            if not problems_of(again, control):
                break


def _asks_again(result: dict[str, Any], control: dict[str, Any]) -> bool:
    """Whether the cell's only problems are app errors beyond the control's."""
    errors = _errors(result, control)
    return bool(errors) and len(problems_of(result, control)) == len(errors)


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
    # A driver may fail an app under cancellations by itself (the control shows it, or
    # misses a rare one): poolwatch may add no error of another kind, nor many more of
    # the same, that comes back in every run of the cell.
    again = result.get("again", ())
    if any(not problems_of(run, control) for run in again):
        return []  # met by chance: a run of the same cell passed every check
    known = control.get("errors", {})
    found = []
    runs = [result, *again]
    new = [
        {kind: n for kind, n in run.get("errors", {}).items() if kind not in known} for run in runs
    ]
    if new[0]:
        found.append(f"app errors the control never had (run by run: {new})")
    more = [_more_than_the_control(run, control) for run in runs]
    if more[0]:
        found.append(f"more app errors than the control's {known} (run by run: {more})")
    return found


def _more_than_the_control(result: dict[str, Any], control: dict[str, Any]) -> dict[str, int]:
    """The kinds of error the control had too, of which the cell had many more."""
    known = control.get("errors", {})
    errors = result.get("errors", {})
    return {kind: n for kind, n in errors.items() if kind in known and n > 2 * known[kind] + 3}


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


def line(result: dict[str, Any]) -> str:
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
        errors: int | str = sum(result.get("errors", {}).values())
        if "again" in result:  # the runs of the cell asked for again, after the first
            errors = f"{errors}, again {', '.join(_count(a) for a in result['again'])}"
        lines.append(
            f"| {result['stack']} | {result['wiring'] if result['setup'] != 'control' else '-'} "
            f"| {result['setup']} | {_ok(result)} | {result['statuses'].get('abandoned', 0)} "
            f"| {errors} | {result['peak_sessions'] or 'n/a'} | {result.get('peak_limit', '-')} "
            f"| {gauges} | {result.get('unretrieved', 0)} | {'ok' if not problems else 'FAIL'} |"
        )
    return "\n".join(lines)


def _count(result: dict[str, Any]) -> str:
    return "crashed" if "crash" in result else str(sum(result.get("errors", {}).values()))
