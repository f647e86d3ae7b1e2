"""The **N+1** dashboard: findings, duplicates, slow statements, the routes running most
statements."""

from __future__ import annotations

from dashboards.panel import RATE, ROUTE, Panel, Query

__all__ = ["panels"]


def panels() -> list[Panel]:
    """The dashboard's panels, in their order."""
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
