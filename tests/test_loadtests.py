"""The load tests: scenario declarations, and every scenario run in CI mode.

The full run starts PostgreSQL, the app under uvicorn, Prometheus and Locust for each
scenario (a few minutes in all); it needs PostgreSQL's binaries and Debian's
``prometheus``, which the test command installs (``tests/servers.py``).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from loadtests.findings_check import judge
from loadtests.runner import dashboard_queries
from loadtests.scenarios import ALL_ALERTS, SCENARIOS, FindingCheck
from tests.test_alerts import alerting_rules

ROOT = Path(__file__).resolve().parent.parent


def test_scenarios_speak_of_alerts_that_exist() -> None:
    assert set(ALL_ALERTS) == {r["alert"] for r in alerting_rules()}
    for scenario in SCENARIOS.values():
        assert set(scenario.must_fire) <= set(ALL_ALERTS), scenario.name
        assert set(scenario.must_not_fire) <= set(ALL_ALERTS), scenario.name
        assert not set(scenario.must_fire) & set(scenario.must_not_fire), scenario.name


def test_the_healthy_scenario_must_fire_nothing() -> None:
    healthy = SCENARIOS["healthy"]
    assert healthy.must_fire == ()
    assert set(healthy.must_not_fire) == set(ALL_ALERTS)


def test_every_required_scenario_exists() -> None:
    assert {
        "healthy",
        "pool_exhaustion",
        "slow_queries",
        "nplusone_storm",
        "error_burst",
        "database_outage",
        "autosize_step",
        "autosize_database_bound",
        "held_idle",
    } <= set(SCENARIOS)


def test_every_dashboard_panel_query_is_checked() -> None:
    queries = dashboard_queries()
    assert len(queries) >= 30
    assert all("$" not in expr for _, _, expr in queries)


REVIEWED = "/posts/{post_id}/reviewed-comments"
CHECKED = "/posts/{post_id}/checked-comments"
HELD = FindingCheck("held_idle", REVIEWED, listed=True, function="add_reviewed_comment")
QUIET = FindingCheck("held_idle", CHECKED, listed=False)


def _held(route: str, before: str, after: str) -> dict[str, str]:
    return {"kind": "held_idle", "route": route, "before": before, "call_path": after}


def test_a_held_idle_finding_must_name_two_lines_of_the_endpoint_in_order() -> None:
    at = "loadtests/app.py:{} in create_app.<locals>.add_reviewed_comment"
    good = _held(REVIEWED, "main.py:3 in run -> " + at.format(118), at.format(120))
    idle = {REVIEWED: 0.3, CHECKED: 0.001}
    assert [r.ok for r in judge([HELD, QUIET], [good], idle)] == [True, True]
    row = judge([HELD], [good], idle)[0]
    assert "loadtests/app.py:118 -> :120" in row.observed
    # The lines the wrong way round, another function's, or none at all: violated.
    backwards = _held(REVIEWED, at.format(120), at.format(118))
    elsewhere = _held(REVIEWED, "loadtests/app.py:50 in hold", "loadtests/app.py:52 in hold")
    for finding in (backwards, elsewhere, _held(REVIEWED, "", "")):
        assert not judge([HELD], [finding], idle)[0].ok
    assert not judge([HELD], [], idle)[0].ok


def test_the_control_route_must_list_nothing_and_hold_no_idle_time() -> None:
    listed = [_held(CHECKED, "loadtests/app.py:1 in f", "loadtests/app.py:2 in f")]
    assert not judge([QUIET], listed, {CHECKED: 0.001})[0].ok
    assert not judge([QUIET], [], {CHECKED: 0.3})[0].ok  # the metric says it was held
    assert not judge([QUIET], [], {})[0].ok  # no checkouts at all: the run proves nothing
    assert judge([QUIET], [], {CHECKED: 0.001})[0].ok


def _can_run() -> str | None:
    if shutil.which("prometheus") is None:
        return "prometheus is not installed"
    if not (shutil.which("pg_ctl") or list(Path("/usr/lib/postgresql").glob("*/bin/pg_ctl"))):
        return "PostgreSQL's binaries are not installed"
    return None


def test_all_scenarios_in_ci_mode(tmp_path: Path) -> None:
    reason = _can_run()
    if reason is not None:
        if os.environ.get("CI", "").lower() not in ("", "0", "false", "no"):
            pytest.fail(f"load tests cannot run in CI: {reason}")
        pytest.skip(reason)
    done = subprocess.run(
        [sys.executable, "-m", "loadtests", "all", "--ci", "--out", str(tmp_path)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=900,
        check=False,
    )
    report = (tmp_path / "summary.md").read_text() if (tmp_path / "summary.md").exists() else ""
    assert done.returncode == 0, f"{done.stdout}\n{done.stderr[-4000:]}\n{report}"
    for name in SCENARIOS:
        summary = (tmp_path / name / "summary.md").read_text()
        assert "PASSED" in summary, summary
        assert (tmp_path / name / "locust.html").exists()
        assert (tmp_path / name / "pool.png").exists()
