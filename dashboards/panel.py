"""What a panel shows: its queries, title, description and unit, as plain data.

The dashboards are lists of :class:`Panel`; :mod:`dashboards.grafana` turns them into
Grafana's model. Every query reads counters through ``rate``/``increase`` over
:data:`RATE` and filters with the dashboard's variables (:data:`POOL`, :data:`ROUTE`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

__all__ = ["POOL", "RATE", "ROUTE", "Panel", "Query", "quantiles"]

# Label matchers every query carries, from the dashboard's variables.
POOL = 'job=~"$job", instance=~"$instance", pool=~"$pool"'
ROUTE = 'job=~"$job", instance=~"$instance", route=~"$route"'
RATE = "$__rate_interval"


@dataclass(frozen=True)
class Query:
    """One PromQL query and its legend; ``instant`` ones fill a table, evaluated once."""

    expr: str
    legend: str = ""
    instant: bool = False


@dataclass(frozen=True)
class Panel:
    """One panel: its queries, in order (A, B, ...), and how it is drawn."""

    title: str
    description: str
    unit: str
    queries: Sequence[Query]
    kind: str = "timeseries"  # or "stat", "table"
    width: int = 12
    height: int = 8
    thresholds: Sequence[tuple[float, str]] = ()
    max: float | None = None


def quantiles(metric: str, matchers: str, by: str, legend: str) -> list[Query]:
    """The p50, p95 and p99 of a histogram, summed ``by`` these labels."""
    return [
        Query(
            f"histogram_quantile({q}, sum by ({by}, le) "
            f"(rate({metric}_bucket{{{matchers}}}[{RATE}])))",
            f"p{int(q * 100)} {legend}",
        )
        for q in (0.5, 0.95, 0.99)
    ]
