"""Run load-test scenarios end to end and judge them.

For each scenario: the app under uvicorn on a fresh PostgreSQL cluster (or SQLite),
Prometheus scraping it every second with the alert rules' fast profile, Locust headless
driving it; then which alerts fired (Prometheus's ``ALERTS``), whether every dashboard
query returns data, and a report in ``loadtests/out/<scenario>/``. Everything is stopped
on the way out, on failure and on Ctrl-C too.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import sys
import time
import urllib.request
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from alerts import build as alert_rules
from loadtests.findings_check import judge
from loadtests.prom import PromAPI
from loadtests.report import (
    AlertRow,
    FindingRow,
    PanelRow,
    Result,
    locust_totals,
    plot_panels,
    write_summary,
)
from loadtests.scenarios import ALL_ALERTS, SCENARIOS, Scenario
from loadtests.services import App, Locust, Postgres, Prometheus, workdir

__all__ = ["dashboard_queries", "run"]

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "loadtests" / "out"
# Grafana's $__rate_interval for a 1 s scrape is a few seconds; a wider window gives
# every panel of a short run its data.
RATE_INTERVAL = "30s"
SETTLE = 3.0  # seconds for the first scrapes before the load starts
DRAIN = 4.0  # seconds for the last scrapes and rule evaluations after it ends


def dashboard_queries() -> list[tuple[str, str, str]]:
    """``(dashboard, panel, PromQL)`` of every panel target, variables substituted."""
    found = []
    for path in sorted((ROOT / "dashboards").glob("poolwatch-*.json")):
        board = json.loads(path.read_text())
        for panel in board["panels"]:
            for target in panel.get("targets", []):
                expr = target["expr"].replace("$__rate_interval", RATE_INTERVAL)
                expr = re.sub(r"\$\w+", ".+", expr)
                found.append((board["title"], panel["title"], expr))
    return found


def _rules(work: Path) -> Path:
    directory = work / "rules"
    directory.mkdir()
    for name, text in alert_rules.outputs(alert_rules.load(profile="fast"), False).items():
        (directory / name).write_text(text)
    return directory / alert_rules.RULES


def _progress(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def run(
    names: Sequence[str],
    *,
    ci: bool,
    sqlite: bool = False,
    workers: int = 0,
    host: str | None = None,
    out: Path = OUT,
) -> list[Result]:
    """Run the scenarios ``names`` in turn; returns their results."""
    results = []
    with workdir() as work:
        rules = _rules(work)
        postgres: Postgres | None = None
        try:
            if host is None and not sqlite:
                _progress("[loadtest] starting PostgreSQL (throwaway cluster)...")
                postgres = Postgres(work)
            for name in names:
                scenario = SCENARIOS[name]
                target = out / name
                shutil.rmtree(target, ignore_errors=True)
                target.mkdir(parents=True)
                if scenario.needs_postgres and postgres is None and host is None:
                    result = Result(
                        name, scenario.description, 0, [], [], skipped="needs PostgreSQL"
                    )
                elif scenario.outage is not None and host is not None:
                    result = Result(name, scenario.description, 0, [], [], skipped="--host given")
                else:
                    result = _run_one(
                        scenario,
                        ci=ci,
                        work=work,
                        rules=rules,
                        postgres=postgres,
                        workers=workers,
                        host=host,
                        out=target,
                    )
                write_summary(result, target, _plots(target))
                results.append(result)
                _progress(f"[loadtest] {name}: {'passed' if result.ok else 'FAILED'}")
        finally:
            if postgres is not None:
                postgres.close()
    return results


def _plots(target: Path) -> list[str]:
    return sorted(p.name for p in target.glob("*.png"))


def _database_url(scenario: Scenario, postgres: Postgres | None, work: Path) -> str:
    params = scenario.env.get("DATABASE_URL_PARAMS", "")
    if postgres is None:
        return f"sqlite://{work / 'loadtest.sqlite3'}"
    return f"{postgres.url}?{params}" if params else postgres.url


def _run_one(
    scenario: Scenario,
    *,
    ci: bool,
    work: Path,
    rules: Path,
    postgres: Postgres | None,
    workers: int,
    host: str | None,
    out: Path,
) -> Result:
    seconds = scenario.duration(ci)
    env = {k: v for k, v in scenario.env.items() if k != "DATABASE_URL_PARAMS"}
    env["DATABASE_URL"] = _database_url(scenario, postgres, work)
    env.setdefault("POOLWATCH_LOADTEST_AUTOSIZE", "")
    locust_env = {"POOLWATCH_LOADTEST_STEP": str(seconds / 3)}
    app: App | None = None
    try:
        if host is None:
            app = App(work, env, out / "app.log")
            url, scrape = app.url, app.target
        else:
            url, scrape = host.rstrip("/"), host.split("://", 1)[-1].rstrip("/")
        with Prometheus(work, scrape, rules) as prometheus:
            api = PromAPI(prometheus.url)
            time.sleep(SETTLE)
            started = time.time()
            _progress(f"[loadtest] {scenario.name}: {scenario.description}, {seconds} s")
            with Locust(
                host=url,
                user=scenario.user,
                users=scenario.users,
                spawn_rate=scenario.spawn_rate,
                seconds=seconds,
                out=out,
                workers=workers,
                shape=scenario.shape,
                env=locust_env,
            ) as locust:
                _drive(
                    scenario, locust, api=api, postgres=postgres, started=started, seconds=seconds
                )
            time.sleep(DRAIN)
            ended = time.time()
            fired = api.fired_between(started, ended)
            panels = _check_panels(api, scenario, started, ended)
            findings = _check_findings(api, scenario, url, started, ended)
            plot_panels(api, started, ended, out)
            _save_rules_health(api, out)
    finally:
        if app is not None:
            app.close()
        if postgres is not None and scenario.outage is not None:
            _ensure_running(postgres)
    requests, failures = locust_totals(out)
    return Result(
        scenario.name,
        scenario.description,
        ended - started,
        _alert_rows(scenario, fired),
        panels,
        requests,
        failures,
        findings=findings,
    )


def _check_findings(
    api: PromAPI, scenario: Scenario, url: str, start: float, end: float
) -> list[FindingRow]:
    """The app's findings list, and each route's idle time per checkout over the run."""
    if not scenario.findings:
        return []
    with urllib.request.urlopen(f"{url}/poolwatch/findings", timeout=30) as response:
        listed = json.loads(response.read())["findings"]
    window = f"{max(1, int(end - start) + 1)}s"
    expr = (
        f"sum by (route) (increase(poolwatch_connection_idle_seconds_sum[{window}])) / "
        f"sum by (route) (increase(poolwatch_connection_idle_seconds_count[{window}]))"
    )
    idle = {
        sample["metric"].get("route", ""): float(sample["value"][1])
        for sample in api.query(expr, at=end)
    }
    return judge(scenario.findings, listed, idle)


def _drive(
    scenario: Scenario,
    locust: Locust,
    *,
    api: PromAPI,
    postgres: Postgres | None,
    started: float,
    seconds: int,
) -> None:
    """Wait for Locust, showing progress; stop and start the database if asked."""
    actions: list[tuple[float, str, Callable[[], None]]] = []
    if scenario.outage is not None and postgres is not None:
        down, up = scenario.outage
        actions = [
            (down, "stopping PostgreSQL", postgres.stop),
            (up, "starting PostgreSQL", postgres.start),
        ]
    deadline = started + seconds + 60
    last_report = 0.0
    while locust.running():
        now = time.time()
        if now > deadline:
            raise RuntimeError(f"{scenario.name}: Locust still running after {seconds + 60} s")
        while actions and now - started >= actions[0][0]:
            _, what, action = actions.pop(0)
            _progress(f"[loadtest]   {now - started:5.1f} s  {what}")
            action()
        if now - last_report >= 5:
            last_report = now
            try:
                firing = ", ".join(sorted(api.firing_now())) or "none"
            except OSError:
                firing = "?"
            _progress(f"[loadtest]   {now - started:5.1f} s  firing: {firing}")
        time.sleep(0.5)
    locust.wait(timeout=30)


def _ensure_running(postgres: Postgres) -> None:
    with contextlib.suppress(RuntimeError):  # already running
        postgres.start()


def _alert_rows(scenario: Scenario, fired: set[str]) -> list[AlertRow]:
    rows = []
    for alert in ALL_ALERTS:
        expected = "-"
        if alert in scenario.must_fire:
            expected = "must fire"
        elif alert in scenario.must_not_fire:
            expected = "must not fire"
        rows.append(AlertRow(alert, expected, alert in fired))
    return rows


def _check_panels(api: PromAPI, scenario: Scenario, start: float, end: float) -> list[PanelRow]:
    rows: dict[tuple[str, str], int] = {}
    for dashboard, panel, expr in dashboard_queries():
        series = len(api.query_range(expr, start, end, 5))
        key = (dashboard, panel)
        rows[key] = max(rows.get(key, 0), series)
    return [
        PanelRow(dashboard, panel, count, panel in scenario.may_be_empty)
        for (dashboard, panel), count in rows.items()
    ]


def _save_rules_health(api: PromAPI, out: Path) -> None:
    rules: list[dict[str, Any]] = api.rules()
    broken = [r["name"] for r in rules if r.get("health") not in ("ok", "unknown")]
    (out / "rules.json").write_text(json.dumps({"rules": len(rules), "unhealthy": broken}))
    if broken:
        raise RuntimeError(f"Prometheus reports unhealthy rules: {broken}")


def table(results: Sequence[Result]) -> str:
    """Scenarios x alerts, as Markdown: F fired, - quiet; bold where expectation broke."""
    short = [a.removeprefix("Poolwatch") for a in ALL_ALERTS]
    lines = [
        "| scenario | " + " | ".join(short) + " | dashboards | verdict |",
        "|---" * (len(short) + 3) + "|",
    ]
    for result in results:
        cells = []
        for row in result.alerts:
            mark = "F" if row.fired else "-"
            if row.expected == "must fire":
                mark = f"{mark} (must)"
            elif row.expected == "must not fire":
                mark = f"{mark}" if row.fired else "-"
            cells.append(mark if row.ok else f"**{mark} ✗**")
        empty = sum(1 for p in result.panels if p.series == 0)
        dash = f"{len(result.panels) - empty}/{len(result.panels)} with data"
        verdict = "passed" if result.ok else ("skipped" if result.skipped else "**FAILED**")
        lines.append(
            f"| {result.scenario} | "
            + " | ".join(cells or ["?"] * len(short))
            + f" | {dash} | {verdict} |"
        )
    return "\n".join(lines)


def environment_ready() -> list[str]:
    """What is missing to run the load tests here (empty: ready)."""
    missing = []
    if shutil.which("prometheus") is None:
        missing.append("prometheus (apt-get install prometheus)")
    if os.geteuid() == 0 and shutil.which("runuser") is None:
        missing.append("runuser (to run PostgreSQL as the postgres user)")
    return missing
