"""Judge the app's findings after a run against a scenario's :class:`FindingCheck` list.

Pure: the runner fetches ``/poolwatch/findings`` and the routes' idle time per checkout
from Prometheus, and hands both here.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from typing import Any

from loadtests.report import FindingRow
from loadtests.scenarios import FindingCheck
from poolwatch.pools.observer import HELD_IDLE_MIN

__all__ = ["APP_FILE", "judge", "line_in"]

APP_FILE = "loadtests/app.py"


def line_in(path: str, function: str) -> int | None:
    """The line of ``function`` in :data:`APP_FILE` that a call path names, if any."""
    for frame in path.split(" -> "):
        # (a route defined inside the app factory: "create_app.<locals>.add_comment")
        name = rf"(?:[\w<>]+\.)*{re.escape(function)}\b"
        match = re.search(rf"{re.escape(APP_FILE)}:(\d+) in {name}", frame)
        if match:
            return int(match.group(1))
    return None


def _names_lines(finding: Mapping[str, Any], function: str) -> tuple[bool, str]:
    """Whether a held_idle finding names two lines of ``function``, the wait between."""
    before = line_in(str(finding.get("before", "")), function)
    after = line_in(str(finding.get("call_path", "")), function)
    shown = f"{APP_FILE}:{before} -> :{after}"
    return before is not None and after is not None and after > before, shown


def judge(
    checks: Sequence[FindingCheck],
    listed: Sequence[Mapping[str, Any]],
    idle: Mapping[str, float],
) -> list[FindingRow]:
    """One row per check. ``listed``: the app's findings; ``idle``: route -> mean seconds
    a checkout of that route ran no statement, over the run."""
    rows = []
    for check in checks:
        found = [f for f in listed if f.get("kind") == check.kind and f.get("route") == check.route]
        observed: list[str] = []
        ok = bool(found) == check.listed
        if check.listed and found and check.function:
            named = [_names_lines(f, check.function) for f in found]
            ok = ok and any(good for good, _ in named)
            observed += sorted({shown for _, shown in named})
        elif found:
            observed.append(f"{len(found)} listed")
        else:
            observed.append("none listed")
        if check.kind == "held_idle":
            mean = idle.get(check.route)
            observed.append(
                "no checkouts" if mean is None else f"idle {mean * 1000:.0f} ms/checkout"
            )
            held = mean is not None and mean >= HELD_IDLE_MIN
            ok = ok and (held if check.listed else mean is not None and not held)
        rows.append(
            FindingRow(
                check.kind,
                check.route,
                "listed" if check.listed else "not listed",
                "; ".join(observed),
                ok,
            )
        )
    return rows
