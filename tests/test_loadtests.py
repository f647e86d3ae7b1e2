"""The load tests: scenario declarations, and every scenario run in CI mode.

The full run starts PostgreSQL, the app under uvicorn, Prometheus and Locust for each
scenario (a few minutes in all); it needs PostgreSQL's binaries and Debian's
``prometheus``, which ``scripts/test.sh`` installs.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from loadtests.runner import dashboard_queries
from loadtests.scenarios import ALL_ALERTS, SCENARIOS
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
    } <= set(SCENARIOS)


def test_every_dashboard_panel_query_is_checked() -> None:
    queries = dashboard_queries()
    assert len(queries) >= 30
    assert all("$" not in expr for _, _, expr in queries)


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
