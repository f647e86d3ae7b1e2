"""The **Queries** dashboard: rates and latency by operation and route, errors, queries
per request, slowest routes."""

from __future__ import annotations

from dashboards.panel import RATE, ROUTE, Panel, Query

__all__ = ["panels"]


def panels() -> list[Panel]:
    """The dashboard's panels, in their order."""
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
