"""Alerts on a pool that is full: too small, or in front of a saturated database."""

from __future__ import annotations

import math
from collections.abc import Mapping

from alerts.humanize import humanize_percentage
from alerts.model import Alert, Case, gauge_case
from alerts.series import POOL, series
from alerts.settings import Config

__all__ = ["alerts"]


# Autosize holds the pool's limit below the most it may use: statements slowed as
# connections were added, so the database, not the pool, is what requests wait for.
_HELD_BELOW_MAX = (
    "(max by (job, instance, pool) (poolwatch_pool_limit_target)\n"
    "< max by (job, instance, pool) (poolwatch_pool_limit_max))"
)


def _held_below_max(m: int) -> list[dict[str, str]]:
    """Series of a pool whose autosize holds its limit at 3 of a max of 40."""
    return [
        series("poolwatch_pool_limit_target", POOL, f"3+0x{m}"),
        series("poolwatch_pool_limit_max", POOL, f"40+0x{m}"),
    ]


def alerts() -> list[Alert]:
    """The group's alerts, in the order of the rule file."""
    a: list[Alert] = []

    def saturated(c: Config, m: int, fires: bool) -> Case:
        used = 100 if fires else math.ceil(100 * c.threshold("PoolwatchPoolSaturated")) - 1
        data = [
            series("db_client_connection_count", {**POOL, "state": "used"}, f"{used}+0x{m}"),
            series("db_client_connection_max", POOL, f"100+0x{m}"),
        ]
        return Case(data, POOL if fires else None, humanize_percentage(used / 100))

    def saturated_by_design(c: Config, m: int) -> Mapping[str, Case]:
        full = saturated(c, m, True).series
        return {"while autosize holds the limit": Case(full + _held_below_max(m))}

    a.append(
        Alert(
            "PoolwatchPoolSaturated",
            "warning",
            lambda c: (
                f"poolwatch:pool_utilisation:ratio >= {c.threshold('PoolwatchPoolSaturated')}\n"
                f"unless on (job, instance, pool)\n{_HELD_BELOW_MAX}"
            ),
            "Pool {{ $labels.pool }} on {{ $labels.instance }} is nearly exhausted",
            "{{ $value | humanizePercentage }} of the connections of pool {{ $labels.pool }} "
            "({{ $labels.job }}, {{ $labels.instance }}) are in use.",
            saturated,
            "{{ $value | humanizePercentage }}",
            quiet=saturated_by_design,
        )
    )

    def waiting(c: Config, m: int, fires: bool) -> Case:
        level = c.threshold("PoolwatchRequestsWaiting") + (2 if fires else -1)
        return gauge_case(
            "db_client_connection_pending_requests", POOL, level, m, value=f"{level:g}", fires=fires
        )

    def waiting_by_design(c: Config, m: int) -> Mapping[str, Case]:
        full = waiting(c, m, True).series
        return {"while autosize holds the limit": Case(full + _held_below_max(m))}

    a.append(
        Alert(
            "PoolwatchRequestsWaiting",
            "warning",
            lambda c: (
                "sum by (job, instance, pool) (db_client_connection_pending_requests) "
                f">= {c.threshold('PoolwatchRequestsWaiting'):g}\n"
                f"unless on (job, instance, pool)\n{_HELD_BELOW_MAX}"
            ),
            "Requests are waiting for connections of pool {{ $labels.pool }}",
            "{{ $value }} requests wait for a connection of pool {{ $labels.pool }} "
            "({{ $labels.job }}, {{ $labels.instance }}), and have for a while.",
            waiting,
            quiet=waiting_by_design,
        )
    )

    def database_bound(c: Config, m: int, fires: bool) -> Case:
        level = c.threshold("PoolwatchDatabaseSaturated") + (2 if fires else -1)
        data = [series("db_client_connection_pending_requests", POOL, f"{level:g}+0x{m}")]
        return Case(data + _held_below_max(m), POOL if fires else None, f"{level:g}")

    def pool_bound(c: Config, m: int) -> Mapping[str, Case]:
        # Waiting at the pool's own max: the pool is too small, not the database.
        at_max = [
            series("db_client_connection_pending_requests", POOL, f"5+0x{m}"),
            series("poolwatch_pool_limit_target", POOL, f"40+0x{m}"),
            series("poolwatch_pool_limit_max", POOL, f"40+0x{m}"),
        ]
        return {"at the pool's max": Case(at_max)}

    a.append(
        Alert(
            "PoolwatchDatabaseSaturated",
            "warning",
            lambda c: (
                "sum by (job, instance, pool) (db_client_connection_pending_requests) "
                f">= {c.threshold('PoolwatchDatabaseSaturated'):g}\n"
                f"and on (job, instance, pool)\n{_HELD_BELOW_MAX}"
            ),
            "The database behind pool {{ $labels.pool }} is the bottleneck",
            "{{ $value }} requests wait for pool {{ $labels.pool }} ({{ $labels.job }}, "
            "{{ $labels.instance }}) while autosize holds its limit below its max: statements "
            "slowed as connections were added, so more connections would not help.",
            database_bound,
            quiet=pool_bound,
        )
    )

    def held_idle(c: Config, m: int, fires: bool) -> Case:
        # Per minute, connections were held 100 s; idle for a share of it just over (or
        # under) the threshold, while the pool is full.
        share = c.threshold("PoolwatchConnectionsHeldIdle") + (0.1 if fires else -0.1)
        idle = round(share * 100)
        route = {**POOL, "route": "/orders"}
        data = [
            series("poolwatch_connection_idle_seconds_sum", route, f"0+{idle}x{m}"),
            series("db_client_connection_use_time_seconds_sum", POOL, f"0+100x{m}"),
            *saturated(c, m, True).series,
        ]
        return Case(data, POOL if fires else None, humanize_percentage(idle / 100))

    def idle_with_room(c: Config, m: int) -> Mapping[str, Case]:
        # Held idle as much, but the pool has room: a smell for the findings, no page.
        idle = held_idle(c, m, True).series[:2]
        spare = [
            series("db_client_connection_count", {**POOL, "state": "used"}, f"50+0x{m}"),
            series("db_client_connection_max", POOL, f"100+0x{m}"),
        ]
        return {"while the pool has room": Case(idle + spare)}

    a.append(
        Alert(
            "PoolwatchConnectionsHeldIdle",
            "warning",
            lambda c: (
                "sum by (job, instance, pool) "
                f"(rate(poolwatch_connection_idle_seconds_sum[{c.rate}]))\n"
                "/ sum by (job, instance, pool) "
                f"(rate(db_client_connection_use_time_seconds_sum[{c.rate}]))\n"
                f">= {c.threshold('PoolwatchConnectionsHeldIdle')}\n"
                "and on (job, instance, pool)\n"
                "poolwatch:pool_utilisation:ratio >= "
                f"{c.value('PoolwatchConnectionsHeldIdle', 'saturation')}"
            ),
            "Pool {{ $labels.pool }} is full of connections held while idle",
            "Connections of pool {{ $labels.pool }} ({{ $labels.job }}, {{ $labels.instance }}) "
            "ran no statement for {{ $value | humanizePercentage }} of the time they were "
            "held, while the pool is nearly exhausted: code holds them (often an open "
            "transaction) across other awaits. poolwatch_connection_idle_seconds by route "
            "says where.",
            held_idle,
            "{{ $value | humanizePercentage }}",
            quiet=idle_with_room,
        )
    )
    return a
