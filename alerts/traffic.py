"""Alerts on what the app's traffic does to its pools and statements."""

from __future__ import annotations

import math

from alerts.humanize import humanize_duration, humanize_percentage
from alerts.model import Alert, Case, counter_alert
from alerts.series import (
    POOL,
    ROUTE,
    bound_above,
    bound_at_or_below,
    histogram,
    le_label,
    per_minute,
    series,
)
from alerts.settings import Config, seconds

# The bucket bounds poolwatch exports, for tests whose quantile must land on a bound.
from poolwatch.exposition.metrics import QUERIES_BUCKETS, QUERY_BUCKETS, WAIT_BUCKETS

__all__ = ["alerts"]


def _jump_lead(config: Config) -> int:
    # Minutes of the "before" level: the baseline window, its offset and a margin.
    return (seconds(config.baseline) + seconds(config.baseline_offset)) // 60 + 30


def alerts() -> list[Alert]:
    """The group's alerts, in the order of the rule file."""
    a: list[Alert] = []

    def wait_p99(c: Config, m: int, fires: bool) -> Case:
        t = c.threshold("PoolwatchAcquireWaitHigh")
        at = bound_above(WAIT_BUCKETS, t) if fires else bound_at_or_below(WAIT_BUCKETS, t)
        data = histogram("db_client_connection_wait_time_seconds", POOL, WAIT_BUCKETS, at, m)
        return Case(data, POOL if fires else None, humanize_duration(at))

    a.append(
        Alert(
            "PoolwatchAcquireWaitHigh",
            "warning",
            lambda c: (
                f"poolwatch:connection_wait_seconds:p99 > {c.threshold('PoolwatchAcquireWaitHigh')}"
            ),
            "Getting a connection from pool {{ $labels.pool }} is slow",
            "The 99th percentile wait for a connection of pool {{ $labels.pool }} "
            "({{ $labels.job }}, {{ $labels.instance }}) is {{ $value | humanizeDuration }}.",
            wait_p99,
            "{{ $value | humanizeDuration }}",
        )
    )

    a.append(
        counter_alert(
            "PoolwatchAcquireTimeouts",
            "critical",
            metric="db_client_connection_timeouts_total",
            by="job, instance, pool",
            labels=POOL,
            summary="Requests time out waiting for connections of pool {{ $labels.pool }}",
            description=(
                '{{ $value | printf "%.0f" }} acquires of pool {{ $labels.pool }} '
                "({{ $labels.job }}, {{ $labels.instance }}) timed out in the last "
                "rate window; those requests failed."
            ),
        )
    )

    def churn(c: Config, m: int, fires: bool) -> Case:
        per_second = c.threshold("PoolwatchConnectionChurn") * (2 if fires else 0.95)
        data = [
            series(
                "db_client_connection_create_time_seconds_count",
                POOL,
                f"0+{per_second * 60:g}x{m}",
            )
        ]
        return Case(data, POOL if fires else None, f"{per_second:.2f}")

    a.append(
        Alert(
            "PoolwatchConnectionChurn",
            "warning",
            lambda c: (
                f"poolwatch:connection_creations:rate > {c.threshold('PoolwatchConnectionChurn'):g}"
            ),
            "Pool {{ $labels.pool }} keeps opening new connections",
            "Pool {{ $labels.pool }} ({{ $labels.job }}, {{ $labels.instance }}) opens "
            '{{ $value | printf "%.2f" }} connections per second.',
            churn,
            '{{ $value | printf "%.2f" }}',
        )
    )

    def latency(c: Config, m: int, fires: bool) -> Case:
        t = c.threshold("PoolwatchQueryLatencyHigh")
        at = bound_above(QUERY_BUCKETS, t) if fires else bound_at_or_below(QUERY_BUCKETS, t)
        data = histogram("db_client_operation_duration_seconds", ROUTE, QUERY_BUCKETS, at, m)
        labels = {"job": ROUTE["job"], "route": ROUTE["route"]}
        return Case(data, labels if fires else None, humanize_duration(at))

    a.append(
        Alert(
            "PoolwatchQueryLatencyHigh",
            "warning",
            lambda c: (
                "poolwatch:operation_duration_seconds:p99 > "
                f"{c.threshold('PoolwatchQueryLatencyHigh')}"
            ),
            "Queries of {{ $labels.route }} are slow",
            "The 99th percentile duration of the statements of route {{ $labels.route }} "
            "({{ $labels.job }}) is {{ $value | humanizeDuration }}.",
            latency,
            "{{ $value | humanizeDuration }}",
        )
    )

    def errors(c: Config, m: int, fires: bool) -> Case:
        t = c.threshold("PoolwatchQueryErrors")
        failed = math.ceil(t * 100) * 2 if fires else max(0, math.ceil(t * 100) - 1)
        data = [
            series("db_client_operation_errors_total", ROUTE, f"0+{failed}x{m}"),
            series("db_client_operation_duration_seconds_count", ROUTE, f"0+100x{m}"),
        ]
        labels = {"job": ROUTE["job"], "route": ROUTE["route"]}
        return Case(data, labels if fires else None, humanize_percentage(failed / 100))

    a.append(
        Alert(
            "PoolwatchQueryErrors",
            "warning",
            lambda c: f"poolwatch:operation_errors:ratio > {c.threshold('PoolwatchQueryErrors')}",
            "Statements of {{ $labels.route }} fail",
            "{{ $value | humanizePercentage }} of the statements of route {{ $labels.route }} "
            "({{ $labels.job }}) raise an error.",
            errors,
            "{{ $value | humanizePercentage }}",
        )
    )

    a.append(
        counter_alert(
            "PoolwatchNPlusOne",
            "info",
            metric="poolwatch_nplusone_total",
            by="job, route",
            labels={"job": ROUTE["job"], "route": ROUTE["route"]},
            summary="N+1 queries on {{ $labels.route }}",
            description=(
                '{{ $value | printf "%.0f" }} requests of route {{ $labels.route }} '
                "({{ $labels.job }}) ran one query per row in the last rate window; "
                "GET /poolwatch/findings names the line and the fix."
            ),
        )
    )

    def jump(c: Config, m: int, fires: bool) -> Case:
        before, after = (5, 20) if fires else (20, 20)
        base = _jump_lead(c)
        rows = []
        for bound in (*QUERIES_BUCKETS, math.inf):
            first, then = per_minute(bound, before, 95), per_minute(bound, after, 95)
            le = "+Inf" if bound == math.inf else le_label(bound)
            values = f"0+{first}x{base} {first * base + then}+{then}x{m - 1}"
            rows.append(series("poolwatch_request_queries_bucket", {**ROUTE, "le": le}, values))
        labels = {"job": ROUTE["job"], "route": ROUTE["route"]}
        return Case(rows, labels if fires else None, f"{after:g}")

    a.append(
        Alert(
            "PoolwatchQueriesPerRequestJump",
            "warning",
            lambda c: (
                "poolwatch:request_queries:p95\n"
                f"> {c.threshold('PoolwatchQueriesPerRequestJump'):g} * avg_over_time("
                f"poolwatch:request_queries:p95[{c.baseline}] offset {c.baseline_offset})\n"
                "and poolwatch:request_queries:p95 >= "
                f"{c.value('PoolwatchQueriesPerRequestJump', 'minimum'):g}"
            ),
            "Queries per request of {{ $labels.route }} jumped",
            "Requests of route {{ $labels.route }} ({{ $labels.job }}) now run "
            "{{ $value }} statements (95th percentile), more than twice as many as before.",
            jump,
            lead=_jump_lead,
        )
    )

    return a
