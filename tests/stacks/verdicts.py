"""The checks: what a cell must show against the control of its stack, and the table.

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

from collections.abc import Callable
from typing import Any

from tests.stacks.stacks import LOGIN_LIMIT

__all__ = ["ask_the_control_again", "failures", "line", "problems_of", "table"]

CONTROL_RERUNS = 2


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
        errors = sum(result.get("errors", {}).values())
        lines.append(
            f"| {result['stack']} | {result['wiring'] if result['setup'] != 'control' else '-'} "
            f"| {result['setup']} | {_ok(result)} | {result['statuses'].get('abandoned', 0)} "
            f"| {errors} | {result['peak_sessions'] or 'n/a'} | {result.get('peak_limit', '-')} "
            f"| {gauges} | {result.get('unretrieved', 0)} | {'ok' if not problems else 'FAIL'} |"
        )
    return "\n".join(lines)
