"""Alerts on leaked and lost connections and poolwatch's own health."""

from __future__ import annotations

from alerts.model import Alert, Case, counter_alert, gauge_case
from alerts.series import POOL, ROUTE
from alerts.settings import Config

__all__ = ["alerts"]


def alerts() -> list[Alert]:
    """The group's alerts, in the order of the rule file."""
    a: list[Alert] = []
    a.append(
        counter_alert(
            "PoolwatchConnectionLeaks",
            "warning",
            metric="poolwatch_connection_leaks_total",
            by="job, instance, pool, route",
            labels={**POOL, "route": ROUTE["route"]},
            summary="Connections of pool {{ $labels.pool }} are held too long",
            description=(
                '{{ $value | printf "%.0f" }} connections taken by {{ $labels.route }} '
                "({{ $labels.job }}, {{ $labels.instance }}) were held past the leak threshold; "
                "the poolwatch.leaks log names the line."
            ),
        )
    )

    def unaccounted(c: Config, m: int, fires: bool) -> Case:
        level = c.threshold("PoolwatchConnectionsUnaccounted") + (2 if fires else 0)
        return gauge_case("poolwatch_pool_drift", POOL, level, m, value=f"{level:g}", fires=fires)

    a.append(
        Alert(
            "PoolwatchConnectionsUnaccounted",
            "warning",
            lambda c: (
                "min by (job, instance, pool) (min_over_time(poolwatch_pool_drift["
                f"{c.rate}])) > {c.threshold('PoolwatchConnectionsUnaccounted'):g}"
            ),
            "Connections of pool {{ $labels.pool }} are out with nobody holding them",
            "{{ $value }} connections of pool {{ $labels.pool }} ({{ $labels.job }}, "
            "{{ $labels.instance }}) have been in use in the driver all along the last rate "
            "window with no checkout poolwatch saw: taken around the ORM, or lost for good.",
            unaccounted,
        )
    )
    a.append(
        counter_alert(
            "PoolwatchInternalErrors",
            "warning",
            metric="poolwatch_internal_errors_total",
            by="job, instance, component",
            labels={"job": POOL["job"], "instance": POOL["instance"], "component": "collector"},
            summary="poolwatch itself is failing in {{ $labels.component }}",
            description=(
                '{{ $value | printf "%.0f" }} faults inside poolwatch ({{ $labels.component }}) '
                "on {{ $labels.instance }}; metrics from it may be incomplete."
            ),
        )
    )

    def down(c: Config, m: int, fires: bool) -> Case:
        labels = {"job": POOL["job"], "instance": POOL["instance"]}
        return gauge_case("up", labels, 0 if fires else 1, m, value="0", fires=fires)

    a.append(
        Alert(
            "PoolwatchTargetDown",
            "critical",
            lambda c: f'up{{job=~"{c.job}"}} == 0',
            "{{ $labels.instance }} of {{ $labels.job }} cannot be scraped",
            "Prometheus cannot scrape {{ $labels.instance }} ({{ $labels.job }}): up is "
            "{{ $value }}. The app is down, or its metrics endpoint is.",
            down,
        )
    )
    return a
