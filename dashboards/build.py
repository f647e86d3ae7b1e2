"""Generate poolwatch's Grafana dashboards with Grafana's grafana-foundation-sdk.

    python -m dashboards.build            # writes dashboards/poolwatch-*.json
    python -m dashboards.build --check    # exit 1 if the committed JSON differs

Three dashboards, all with the same variables (data source; job, instance, pool and
route, each multi-valued with "All" meaning ``.+``): **Pools** (utilisation, connections,
waiting, acquire wait, hold and creation times, time held idle, transactions by outcome,
rollback ratio and transaction duration, timeouts, autosize and whether it still works,
leaks, unaccounted connections and give-backs), **Queries** (rates and latency by
operation and route, errors, queries per request, slowest routes) and **N+1** (findings,
duplicates, slow statements, the routes running most statements).
Every panel has a title, a description and a unit; counters are always read through
``rate``/``increase`` over ``$__rate_interval``; uids are fixed; dashboards are not
editable (provisioned copies are replaced on every start anyway).
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from grafana_foundation_sdk.builders import common, prometheus, stat, table, timeseries
from grafana_foundation_sdk.builders import dashboard as db
from grafana_foundation_sdk.cog import builder as cogbuilder
from grafana_foundation_sdk.cog.encoder import JSONEncoder
from grafana_foundation_sdk.models import common as common_model
from grafana_foundation_sdk.models import dashboard as model
from grafana_foundation_sdk.models.prometheus import PromQueryFormat

__all__ = ["DASHBOARDS", "main", "render"]

HERE = Path(__file__).resolve().parent
DATASOURCE = model.DataSourceRef(type_val="prometheus", uid="${datasource}")
# Label matchers every query carries, from the dashboard's variables.
POOL = 'job=~"$job", instance=~"$instance", pool=~"$pool"'
ROUTE = 'job=~"$job", instance=~"$instance", route=~"$route"'
RATE = "$__rate_interval"


@dataclass(frozen=True)
class Query:
    expr: str
    legend: str = ""
    instant: bool = False


@dataclass(frozen=True)
class Panel:
    title: str
    description: str
    unit: str
    queries: Sequence[Query]
    kind: str = "timeseries"  # or "stat", "table"
    width: int = 12
    height: int = 8
    thresholds: Sequence[tuple[float, str]] = ()
    max: float | None = None


def _quantiles(metric: str, matchers: str, by: str, legend: str) -> list[Query]:
    return [
        Query(
            f"histogram_quantile({q}, sum by ({by}, le) "
            f"(rate({metric}_bucket{{{matchers}}}[{RATE}])))",
            f"p{int(q * 100)} {legend}",
        )
        for q in (0.5, 0.95, 0.99)
    ]


def _age(metric: str, legend: str) -> Query:
    """How old a pool's Unix-time gauge was when scraped, the oldest of its workers'
    (timestamp() is the scrape's time: no sawtooth of the scrape interval; a forked
    worker's copy still at 0 is left out)."""
    selector = f"{metric}{{{POOL}}}"
    return Query(
        f"max by (instance, pool) (timestamp({selector}) - ({selector} > 0))",
        f"{legend} {{{{instance}}}} {{{{pool}}}}",
    )


def pools() -> list[Panel]:
    used = f'sum by (instance, pool) (db_client_connection_count{{{POOL}, state="used"}})'
    return [
        Panel(
            "Utilisation (used / max)",
            "Connections in use over the pool's maximum (the autosize limit in force, if "
            "autosize runs). Yellow from 80%; at 95% for 5 minutes PoolwatchPoolSaturated "
            "fires.",
            "percentunit",
            [
                Query(
                    f"{used}\n/ sum by (instance, pool) (db_client_connection_max{{{POOL}}} > 0)",
                    "{{instance}} {{pool}}",
                )
            ],
            thresholds=((0.8, "yellow"), (0.95, "red")),
            max=1,
        ),
        Panel(
            "Connections: used, idle, max",
            "The pool's connections by state, read from the driver's own pool at scrape "
            "time, and the most it allows now.",
            "short",
            [
                Query(used, "used {{instance}} {{pool}}"),
                Query(
                    f'sum by (instance, pool) (db_client_connection_count{{{POOL}, state="idle"}})',
                    "idle {{instance}} {{pool}}",
                ),
                Query(
                    f"sum by (instance, pool) (db_client_connection_max{{{POOL}}})",
                    "max {{instance}} {{pool}}",
                ),
            ],
        ),
        Panel(
            "Requests waiting",
            "Requests (tasks or threads) waiting for a connection right now. Waiting at "
            "every evaluation for 5 minutes fires PoolwatchRequestsWaiting.",
            "short",
            [
                Query(
                    f"sum by (instance, pool) (db_client_connection_pending_requests{{{POOL}}})",
                    "{{instance}} {{pool}}",
                )
            ],
        ),
        Panel(
            "Acquire wait p50 / p95 / p99",
            "Time a request waited for a pooled connection (opening a new one excluded). "
            "p99 over 250 ms fires PoolwatchAcquireWaitHigh.",
            "s",
            _quantiles("db_client_connection_wait_time_seconds", POOL, "pool", "{{pool}}"),
        ),
        Panel(
            "Hold time p50 / p95 / p99",
            "Time a connection stayed checked out, from acquire to release: long holds "
            "(transactions around external calls) starve the pool without query load.",
            "s",
            _quantiles("db_client_connection_use_time_seconds", POOL, "pool", "{{pool}}"),
        ),
        Panel(
            "Connections held: in statements and idle, by route",
            "Connections held on average, split into the time their statements ran and the "
            "time they ran none (held across another await, a sleep, an outbound call; "
            "poolwatch_connection_idle_seconds). Idle near the pool's size while it is full: "
            "PoolwatchConnectionsHeldIdle.",
            "short",
            [
                Query(
                    "sum by (pool, route) "
                    f"(rate(poolwatch_connection_idle_seconds_sum{{{POOL}}}[{RATE}]))",
                    "{{pool}} {{route}} idle",
                ),
                Query(
                    "sum by (pool, route) "
                    f"(rate(db_client_operation_duration_seconds_sum{{{POOL}}}[{RATE}]))",
                    "{{pool}} {{route}} statements",
                ),
            ],
        ),
        Panel(
            "Transactions/s by outcome",
            "Transactions that ended, by outcome: commit; rollback (the application rolled "
            "back); error (an exception left the transaction's block, or COMMIT failed); "
            "closed (a SQLAlchemy connection or session closed without a commit, usually "
            "reads). Savepoints are part of their transaction.",
            "ops",
            [
                Query(
                    "sum by (pool, outcome) "
                    f'(rate(poolwatch_transactions_total{{{POOL}, route=~"$route"}}[{RATE}]))',
                    "{{pool}} {{outcome}}",
                )
            ],
        ),
        Panel(
            "Rollback ratio by route",
            "Of the transactions that committed or rolled back, the share rolled back, by "
            "the application or by an exception (closed ones left out). A route whose "
            "ratio climbs is failing its writes.",
            "percentunit",
            [
                Query(
                    "sum by (pool, route) (rate(poolwatch_transactions_total"
                    f'{{{POOL}, route=~"$route", outcome=~"rollback|error"}}[{RATE}])) / '
                    "sum by (pool, route) (rate(poolwatch_transactions_total"
                    f'{{{POOL}, route=~"$route", outcome=~"commit|rollback|error"}}[{RATE}]))',
                    "{{pool}} {{route}}",
                )
            ],
        ),
        Panel(
            "Transaction duration p50 / p95 / p99",
            "From BEGIN to COMMIT or ROLLBACK. A transaction open across another await holds "
            "its connection, and its row locks, for all of it.",
            "s",
            _quantiles("poolwatch_transaction_duration_seconds", POOL, "pool", "{{pool}}"),
        ),
        Panel(
            "Creation time p50 / p95 / p99",
            "Time to open a new database connection.",
            "s",
            _quantiles("db_client_connection_create_time_seconds", POOL, "pool", "{{pool}}"),
        ),
        Panel(
            "Connections created/s",
            "New connections per second: a steady pool opens a few per hour. Over 1/s for "
            "15 minutes fires PoolwatchConnectionChurn.",
            "ops",
            [
                Query(
                    "sum by (instance, pool) "
                    f"(rate(db_client_connection_create_time_seconds_count{{{POOL}}}[{RATE}]))",
                    "{{instance}} {{pool}}",
                )
            ],
        ),
        Panel(
            "Timeouts/s",
            "Acquires that gave up waiting: each is a failed request (PoolwatchAcquireTimeouts).",
            "ops",
            [
                Query(
                    "sum by (instance, pool) "
                    f"(rate(db_client_connection_timeouts_total{{{POOL}}}[{RATE}]))",
                    "{{instance}} {{pool}}",
                )
            ],
        ),
        Panel(
            "Autosize: limit and ceiling",
            "The limit autosize chose, and the most it may choose now (its max, or the "
            "database budget). At the ceiling with requests waiting for 10 minutes: "
            "PoolwatchAutosizeAtCeiling.",
            "short",
            [
                Query(
                    f"max by (instance, pool) (poolwatch_pool_limit_target{{{POOL}}})",
                    "limit {{instance}} {{pool}}",
                ),
                Query(
                    f"max by (instance, pool) (poolwatch_pool_limit_max{{{POOL}}})",
                    "ceiling {{instance}} {{pool}}",
                ),
            ],
        ),
        Panel(
            "Autosize: resizes",
            "Changes of the limit, up and down, per interval. Frequent changes both ways "
            "mean the load itself is changing, or the controller is hunting.",
            "short",
            [
                Query(
                    "sum by (pool, direction) "
                    f"(increase(poolwatch_pool_resizes_total{{{POOL}}}[{RATE}]))",
                    "{{pool}} {{direction}}",
                )
            ],
        ),
        Panel(
            "Autosize: age of the last decision and budget read",
            "How old autosize's last decision and its last read of the database's "
            "connection budget were when scraped (the oldest worker's). It decides every "
            "autosize.interval (0.25 s) and reads every autosize.budget_interval (5 s), "
            "so both stay near 0 and 5 s. A decision over 30 s old: "
            "PoolwatchAutosizeStalled; a read over 60 s old while reads fail: "
            "PoolwatchAutosizeBudgetUnread.",
            "s",
            [
                _age("poolwatch_autosize_last_decision_timestamp_seconds", "decision"),
                _age("poolwatch_autosize_budget_last_read_timestamp_seconds", "budget read"),
            ],
            thresholds=((30, "yellow"), (60, "red")),
        ),
        Panel(
            "Autosize: failed budget reads and orphaned permits",
            "Reads of the database's connection budget that failed, per interval (the "
            "database refusing or down, a role that cannot read pg_stat_activity, a "
            "blocked event loop; the poolwatch.autosize log says which), and autosize "
            "permits out with no checkout behind them: connections the limit counts that "
            "nobody can use (PoolwatchAutosizePermitsOrphaned).",
            "short",
            [
                Query(
                    "sum by (instance, pool) (increase("
                    f"poolwatch_autosize_budget_read_errors_total{{{POOL}}}[{RATE}]))",
                    "failed reads {{instance}} {{pool}}",
                ),
                Query(
                    f"sum by (instance, pool) (poolwatch_autosize_orphaned_permits{{{POOL}}})",
                    "orphaned permits {{instance}} {{pool}}",
                ),
            ],
        ),
        Panel(
            "Connection leaks",
            "Checkouts held past the leak threshold, by the route that took them; the "
            "poolwatch.leaks log names the line (PoolwatchConnectionLeaks).",
            "short",
            [
                Query(
                    "sum by (pool, route) "
                    f"(increase(poolwatch_connection_leaks_total{{{POOL}}}[{RATE}]))",
                    "{{pool}} {{route}}",
                )
            ],
        ),
        Panel(
            "Unaccounted connections (drift)",
            "Connections the driver has in use that no checkout poolwatch saw accounts for "
            "(above 0: taken around the ORM, or lost); below 0, checkouts poolwatch holds "
            "that the driver has back. Above 0 all along the rate window: "
            "PoolwatchConnectionsUnaccounted.",
            "short",
            [
                Query(
                    f"sum by (instance, pool) (poolwatch_pool_drift{{{POOL}}})",
                    "{{instance}} {{pool}}",
                )
            ],
        ),
        Panel(
            "Connections given back after a failed acquire",
            "Connections taken by an acquire that was then cancelled or timed out (a "
            "transaction's BEGIN cut short), which poolwatch gave back to the pool: "
            "returned, closed (its slot back), or failed (it may be lost).",
            "short",
            [
                Query(
                    "sum by (pool, outcome) "
                    f"(increase(poolwatch_connections_reclaimed_total{{{POOL}}}[{RATE}]))",
                    "{{pool}} {{outcome}}",
                )
            ],
        ),
        Panel(
            "poolwatch internal errors",
            "Faults inside poolwatch, by component; counted and swallowed, never raised "
            "into the app (PoolwatchInternalErrors).",
            "short",
            [
                Query(
                    "sum by (instance, component) (increase(poolwatch_internal_errors_total"
                    f'{{job=~"$job", instance=~"$instance"}}[{RATE}]))',
                    "{{instance}} {{component}}",
                )
            ],
        ),
    ]


def queries() -> list[Panel]:
    count = f"db_client_operation_duration_seconds_count{{{ROUTE}}}"
    return [
        Panel(
            "Statements/s by operation",
            "Statements per second, by SQL operation (SELECT, INSERT, UPDATE, DELETE, OTHER).",
            "ops",
            [Query(f"sum by (operation) (rate({count}[{RATE}]))", "{{operation}}")],
        ),
        Panel(
            "Statements/s by route",
            "Statements per second, by the HTTP route (or poolwatch.scope) that issued them.",
            "ops",
            [Query(f"sum by (route) (rate({count}[{RATE}]))", "{{route}}")],
        ),
        Panel(
            "Statement p95 by operation",
            "95th percentile statement duration, from send to result (connection wait "
            "excluded), by operation.",
            "s",
            [
                Query(
                    "histogram_quantile(0.95, sum by (operation, le) "
                    f"(rate(db_client_operation_duration_seconds_bucket{{{ROUTE}}}[{RATE}])))",
                    "{{operation}}",
                )
            ],
        ),
        Panel(
            "Statement p95 by route",
            "95th percentile statement duration by route; p99 over 1 s for 10 minutes fires "
            "PoolwatchQueryLatencyHigh.",
            "s",
            [
                Query(
                    "histogram_quantile(0.95, sum by (route, le) "
                    f"(rate(db_client_operation_duration_seconds_bucket{{{ROUTE}}}[{RATE}])))",
                    "{{route}}",
                )
            ],
        ),
        Panel(
            "Queries per request p95 by route",
            "95th percentile number of statements a request ran, by route. A jump after a "
            "deploy is usually a new loop (PoolwatchQueriesPerRequestJump).",
            "short",
            [
                Query(
                    "histogram_quantile(0.95, sum by (route, le) "
                    f"(rate(poolwatch_request_queries_bucket{{{ROUTE}}}[{RATE}])))",
                    "{{route}}",
                )
            ],
        ),
        Panel(
            "Statement errors/s by route",
            "Statements that raised, per second, by route and operation "
            "(PoolwatchQueryErrors at 5% of a route's statements).",
            "ops",
            [
                Query(
                    "sum by (route, operation) "
                    f"(rate(db_client_operation_errors_total{{{ROUTE}}}[{RATE}]))",
                    "{{route}} {{operation}}",
                )
            ],
        ),
        Panel(
            "HTTP request p95 by route",
            "95th percentile request duration until the last response byte, for context "
            "beside the statements.",
            "s",
            [
                Query(
                    "histogram_quantile(0.95, sum by (route, le) "
                    f"(rate(http_server_request_duration_seconds_bucket{{{ROUTE}}}[{RATE}])))",
                    "{{route}}",
                )
            ],
        ),
        Panel(
            "Slowest routes (statement p95)",
            "The ten routes whose statements are slowest at the 95th percentile, over the "
            "dashboard's time range end.",
            "s",
            [
                Query(
                    "topk(10, histogram_quantile(0.95, sum by (route, le) "
                    f"(rate(db_client_operation_duration_seconds_bucket{{{ROUTE}}}[{RATE}]))))",
                    "{{route}}",
                    instant=True,
                )
            ],
            kind="table",
        ),
    ]


def nplusone() -> list[Panel]:
    return [
        Panel(
            "N+1 findings/s by route",
            "Requests per second with at least one N+1 pattern (one query per row of an "
            "earlier query). GET /poolwatch/findings names the line and the fix.",
            "ops",
            [
                Query(
                    f"sum by (route) (rate(poolwatch_nplusone_total{{{ROUTE}}}[{RATE}]))",
                    "{{route}}",
                )
            ],
        ),
        Panel(
            "Duplicate queries/s by route",
            "Requests per second that ran one statement twice with the same parameters.",
            "ops",
            [
                Query(
                    f"sum by (route) (rate(poolwatch_duplicate_queries_total{{{ROUTE}}}[{RATE}]))",
                    "{{route}}",
                )
            ],
        ),
        Panel(
            "Slow statements/s by route",
            "Statements slower than poolwatch's slow_query_threshold, per second.",
            "ops",
            [
                Query(
                    f"sum by (route) (rate(poolwatch_slow_queries_total{{{ROUTE}}}[{RATE}]))",
                    "{{route}}",
                )
            ],
        ),
        Panel(
            "Routes by queries per request (p95)",
            "The ten routes running the most statements per request at the 95th "
            "percentile: where N+1 loops and chatty handlers are.",
            "short",
            [
                Query(
                    "topk(10, histogram_quantile(0.95, sum by (route, le) "
                    f"(rate(poolwatch_request_queries_bucket{{{ROUTE}}}[{RATE}]))))",
                    "{{route}}",
                    instant=True,
                )
            ],
            kind="table",
        ),
        Panel(
            "N+1 alerts firing",
            "Routes for which PoolwatchNPlusOne fires now.",
            "short",
            [
                Query(
                    'count(ALERTS{alertname="PoolwatchNPlusOne", alertstate="firing", '
                    'job=~"$job", route=~"$route"}) or vector(0)',
                    "routes",
                    instant=True,
                )
            ],
            kind="stat",
            width=6,
        ),
    ]


DASHBOARDS = {
    "poolwatch-pools": ("poolwatch / Pools", pools),
    "poolwatch-queries": ("poolwatch / Queries", queries),
    "poolwatch-nplusone": ("poolwatch / N+1", nplusone),
}


def _variables() -> list[db.DatasourceVariable | db.QueryVariable]:
    def labels(name: str, query: str, label: str) -> db.QueryVariable:
        return (
            db.QueryVariable(name)
            .label(label)
            .datasource(DATASOURCE)
            .query(query)
            .refresh(model.VariableRefresh.ON_TIME_RANGE_CHANGED)
            .sort(model.VariableSort.ALPHABETICAL_ASC)
            .multi(True)
            .include_all(True)
            .all_value(".+")
        )

    return [
        db.DatasourceVariable("datasource").label("Data source").type("prometheus"),
        labels("job", "label_values(db_client_connection_count, job)", "Job"),
        labels(
            "instance",
            'label_values(db_client_connection_count{job=~"$job"}, instance)',
            "Instance",
        ),
        labels(
            "pool",
            'label_values(db_client_connection_count{job=~"$job", instance=~"$instance"}, pool)',
            "Pool",
        ),
        labels(
            "route",
            'label_values(poolwatch_request_queries_count{job=~"$job", instance=~"$instance"}, '
            "route)",
            "Route",
        ),
    ]


def _panel(panel: Panel, index: int) -> cogbuilder.Builder[model.Panel]:
    builder: timeseries.Panel | stat.Panel | table.Panel
    if panel.kind == "table":
        builder = table.Panel()
    elif panel.kind == "stat":
        builder = stat.Panel()
    else:
        builder = timeseries.Panel().fill_opacity(10).line_width(1)
        if panel.thresholds:  # drawn as lines across the graph
            builder = builder.thresholds_style(
                common.GraphThresholdsStyleConfig().mode(common_model.GraphThresholdsStyleMode.LINE)
            )
    builder = (
        builder.id(index + 1)
        .title(panel.title)
        .description(panel.description)
        .unit(panel.unit)
        .datasource(DATASOURCE)
        .height(panel.height)
        .span(panel.width)
    )
    if panel.max is not None:
        builder = builder.min(0).max(panel.max)
    steps = [model.Threshold(value=None, color="green")]
    steps += [model.Threshold(value=value, color=color) for value, color in panel.thresholds]
    builder = builder.thresholds(
        db.ThresholdsConfig().mode(model.ThresholdsMode.ABSOLUTE).steps(steps)
    )
    for number, query in enumerate(panel.queries):
        target = (
            prometheus.Dataquery()
            .expr(query.expr)
            .legend_format(query.legend)
            .ref_id(chr(ord("A") + number))
            .datasource(DATASOURCE)
        )
        target = target.instant().format(PromQueryFormat.TABLE) if query.instant else target.range()
        builder = builder.with_target(target)
    return builder


def build(uid: str) -> model.Dashboard:
    """The dashboard ``uid`` of :data:`DASHBOARDS`, built."""
    title, panels = DASHBOARDS[uid]
    board = (
        db.Dashboard(title)
        .uid(uid)
        .tags(["poolwatch", "database"])
        .readonly()
        .time("now-1h", "now")
        .refresh("30s")
        .timezone("browser")
        .tooltip(model.DashboardCursorSync.CROSSHAIR)
        .description(
            "poolwatch connection-pool and query metrics; see the poolwatch README and "
            "alerts/RUNBOOK.md."
        )
    )
    for variable in _variables():
        board = board.with_variable(variable)
    for index, panel in enumerate(panels()):
        board = board.with_panel(_panel(panel, index))
    return board.build()


def render(uid: str) -> str:
    """The dashboard's JSON, as committed."""
    return json.dumps(build(uid), cls=JSONEncoder, indent=2, sort_keys=True) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="compare, do not write")
    args = parser.parse_args(argv)
    stale = []
    for uid in DASHBOARDS:
        path = HERE / f"{uid}.json"
        text = render(uid)
        if args.check:
            if not path.exists() or path.read_text() != text:
                stale.append(str(path))
        else:
            path.write_text(text)
    if stale:
        print("out of date (run python -m dashboards.build): " + ", ".join(stale), file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
