"""What a load test leaves behind: a Markdown summary and PNG plots of the key panels."""

from __future__ import annotations

import csv
import dataclasses
import datetime
from collections.abc import Sequence
from pathlib import Path

from loadtests.prom import PromAPI

__all__ = ["AlertRow", "FindingRow", "PanelRow", "Result", "plot_panels", "write_summary"]

# (file, title, unit, [(legend, PromQL)]): what Grafana would show, drawn from Prometheus.
PLOTS = (
    (
        "pool.png",
        "Pool: connections used, max, requests waiting",
        "connections / requests",
        [
            ("used", 'sum(db_client_connection_count{state="used"})'),
            ("max", "sum(db_client_connection_max)"),
            ("waiting", "sum(db_client_connection_pending_requests)"),
        ],
    ),
    (
        "acquire_wait.png",
        "Acquire wait p99",
        "seconds",
        [
            (
                "p99",
                "histogram_quantile(0.99, sum by (le) "
                "(rate(db_client_connection_wait_time_seconds_bucket[10s])))",
            )
        ],
    ),
    (
        "queries_per_request.png",
        "Queries per request p95, by route",
        "statements",
        [
            (
                "{route}",
                "histogram_quantile(0.95, sum by (route, le) "
                "(rate(poolwatch_request_queries_bucket[10s])))",
            )
        ],
    ),
    (
        "request_latency.png",
        "HTTP request latency p95, by route",
        "seconds",
        [
            (
                "{route}",
                "histogram_quantile(0.95, sum by (route, le) "
                "(rate(http_server_request_duration_seconds_bucket[10s])))",
            )
        ],
    ),
)


@dataclasses.dataclass(frozen=True)
class AlertRow:
    alert: str
    expected: str  # "must fire", "must not fire", "-"
    fired: bool

    @property
    def ok(self) -> bool:
        if self.expected == "must fire":
            return self.fired
        if self.expected == "must not fire":
            return not self.fired
        return True


@dataclasses.dataclass(frozen=True)
class PanelRow:
    dashboard: str
    panel: str
    series: int
    may_be_empty: bool

    @property
    def ok(self) -> bool:
        return self.series > 0 or self.may_be_empty


@dataclasses.dataclass(frozen=True)
class FindingRow:
    kind: str
    route: str
    expected: str  # "listed" or "not listed"
    observed: str  # what the app listed (the lines named), and the route's idle time
    ok: bool


@dataclasses.dataclass
class Result:
    scenario: str
    description: str
    seconds: float
    alerts: list[AlertRow]
    panels: list[PanelRow]
    requests: int = 0
    failures: int = 0
    skipped: str = ""
    findings: list[FindingRow] = dataclasses.field(default_factory=list)

    @property
    def ok(self) -> bool:
        return (
            not self.skipped
            and all(r.ok for r in self.alerts)
            and all(p.ok for p in self.panels)
            and all(f.ok for f in self.findings)
        )


def locust_totals(out: Path) -> tuple[int, int]:
    """(requests, failures) of the run, from Locust's stats CSV."""
    path = out / "locust_stats.csv"
    if not path.exists():
        return 0, 0
    with path.open() as handle:
        for row in csv.DictReader(handle):
            if row.get("Name") == "Aggregated":
                return int(row["Request Count"]), int(row["Failure Count"])
    return 0, 0


def plot_panels(api: PromAPI, start: float, end: float, out: Path) -> list[str]:
    """Draw :data:`PLOTS` from Prometheus; returns the files written."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    written = []
    step = max(1.0, (end - start) / 300)
    for name, title, unit, queries in PLOTS:
        fig, ax = plt.subplots(figsize=(9, 3.5))
        for legend, expr in queries:
            for series in api.query_range(expr, start, end, step):
                times = [float(t) - start for t, _ in series["values"]]
                values = [float(v) for _, v in series["values"]]
                label = legend.format(**series["metric"]) if "{" in legend else legend
                ax.plot(times, values, label=label)
        ax.set_title(title)
        ax.set_xlabel("seconds into the run")
        ax.set_ylabel(unit)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(loc="upper right", fontsize=7)
        fig.tight_layout()
        fig.savefig(out / name, dpi=80)
        plt.close(fig)
        written.append(name)
    return written


def write_summary(result: Result, out: Path, plots: Sequence[str]) -> Path:
    """``summary.md``: the verdict, the alert table, the dashboard check, the plots."""
    verdict = "PASSED" if result.ok else ("SKIPPED" if result.skipped else "FAILED")
    lines = [
        f"# Load test `{result.scenario}`: {verdict}",
        "",
        f"{result.description}. {result.seconds:.0f} s, {result.requests:,} requests, "
        f"{result.failures:,} failures counted by Locust. "
        f"Run at {datetime.datetime.now(datetime.UTC):%Y-%m-%d %H:%M} UTC.",
        "",
    ]
    if result.skipped:
        lines += [f"Skipped: {result.skipped}", ""]
    lines += ["## Alerts", "", "| alert | expected | fired | |", "|---|---|---|---|"]
    for row in result.alerts:
        mark = "ok" if row.ok else "**VIOLATED**"
        lines.append(f"| {row.alert} | {row.expected} | {'yes' if row.fired else 'no'} | {mark} |")
    lines += [
        "",
        "## Dashboard queries",
        "",
        "| dashboard | panel | series | |",
        "|---|---|---|---|",
    ]
    for panel in result.panels:
        mark = "ok" if panel.ok else "**NO DATA**"
        if panel.series == 0 and panel.may_be_empty:
            mark = "no data (nothing of the kind in this scenario)"
        lines.append(f"| {panel.dashboard} | {panel.panel} | {panel.series} | {mark} |")
    if result.findings:
        lines += [
            "",
            "## Findings",
            "",
            "| kind | route | expected | observed | |",
            "|---|---|---|---|---|",
        ]
        for finding in result.findings:
            mark = "ok" if finding.ok else "**VIOLATED**"
            lines.append(
                f"| {finding.kind} | `{finding.route}` | {finding.expected} | "
                f"{finding.observed} | {mark} |"
            )
    lines += ["", "## Panels", ""]
    lines += [f"![{name}]({name})" for name in plots]
    lines += ["", "Locust's own report: [locust.html](locust.html), CSV: `locust_stats.csv`.", ""]
    path = out / "summary.md"
    path.write_text("\n".join(lines))
    return path
