"""Generate poolwatch's Prometheus rules and their promtool unit tests from settings.toml.

    python -m alerts.build                    # alerts/poolwatch.rules.yml + .test.yml
    python -m alerts.build --check            # exit 1 if the committed files differ
    python -m alerts.build --profile fast --out DIR   # rules for a 1 s scrape (load tests)

Every alert is one :class:`Alert`: its expression, severity, annotations and two test
cases built from the same thresholds, one where it fires (with the labels and
annotations it must carry) and one just under the threshold where it must not. Editing a
threshold in settings.toml therefore moves the rule and its tests together.
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import re
import sys
import tomllib
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import yaml
from prometheus_client.utils import floatToGoString

# The bucket bounds poolwatch exports, for tests whose quantile must land on a bound.
from poolwatch.exposition.metrics import QUERIES_BUCKETS, QUERY_BUCKETS, WAIT_BUCKETS

__all__ = ["ALERTS", "Config", "build_rules", "build_tests", "load"]

HERE = Path(__file__).resolve().parent
RULES = "poolwatch.rules.yml"
TESTS = "poolwatch.rules.test.yml"


POOL = {"job": "poolwatch", "instance": "app-1:8000", "pool": "default"}
ROUTE = {"job": "poolwatch", "instance": "app-1:8000", "route": "/authors/{author_id}"}


# -- settings ------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Config:
    """settings.toml, with a profile's overrides applied."""

    job: str
    runbook: str
    rate: str
    baseline: str
    baseline_offset: str
    alerts: Mapping[str, Mapping[str, Any]]

    def threshold(self, alert: str) -> float:
        return float(self.alerts[alert]["threshold"])

    def value(self, alert: str, key: str) -> float:
        return float(self.alerts[alert][key])

    def for_(self, alert: str) -> str:
        return str(self.alerts[alert]["for"])


def load(path: Path = HERE / "settings.toml", profile: str | None = None) -> Config:
    """Read the settings; ``profile`` names a ``[profiles.<name>]`` table to apply."""
    data = tomllib.loads(path.read_text())
    windows = dict(data["windows"])
    alerts = {name: dict(values) for name, values in data["alerts"].items()}
    if profile is not None:
        overrides = data.get("profiles", {}).get(profile)
        if overrides is None:
            raise SystemExit(f"settings.toml has no [profiles.{profile}]")
        windows.update(overrides.get("windows", {}))
        durations = dict(overrides.get("for", {}))
        default = durations.pop("default", None)
        for name, values in alerts.items():
            if name in durations:
                values["for"] = durations[name]
            elif default is not None:
                values["for"] = default
    return Config(
        job=data["job"],
        runbook=data["runbook"],
        rate=windows["rate"],
        baseline=windows["baseline"],
        baseline_offset=windows["baseline_offset"],
        alerts=alerts,
    )


def seconds(duration: str) -> int:
    """A Prometheus duration (``90s``, ``5m``, ``1h``) in seconds."""
    units = {"s": 1, "m": 60, "h": 3600, "d": 86400}
    total = 0
    for number, unit in re.findall(r"(\d+)([smhd])", duration):
        total += int(number) * units[unit]
    return total


# -- Go template functions, for the expected annotations ---------------------------------


def humanize_percentage(value: float) -> str:
    return f"{_g4(value * 100)}%"


def humanize_duration(value: float) -> str:
    if value >= 60:  # whole seconds, in days, hours and minutes as Go's template does
        whole = int(value)
        days, hours = whole // 86400, whole // 3600 % 24
        minutes, secs = whole // 60 % 60, whole % 60
        if days:
            return f"{days}d {hours}h {minutes}m {secs}s"
        if hours:
            return f"{hours}h {minutes}m {secs}s"
        return f"{minutes}m {secs}s"
    if value >= 1:
        return f"{_g4(value)}s"
    prefix = ""
    for candidate in ("m", "u", "n"):
        if value >= 1 or value == 0:
            break
        prefix, value = candidate, value * 1000
    return f"{_g4(value)}{prefix}s"


def _g4(value: float) -> str:
    return f"{value:.4g}"


# -- test series -----------------------------------------------------------------------------


def series(name: str, labels: Mapping[str, str], values: str) -> dict[str, str]:
    inner = ", ".join(f'{k}="{v}"' for k, v in labels.items())
    return {"series": f"{name}{{{inner}}}", "values": values}


def _per_minute(bound: float, at: float, share: int) -> int:
    """Observations per minute up to ``bound`` when ``share`` of 100 are at ``at``."""
    return 0 if bound < at else (share if bound == at else 100)


def _jump_lead(config: Config) -> int:
    # Minutes of the "before" level: the baseline window, its offset and a margin.
    return (seconds(config.baseline) + seconds(config.baseline_offset)) // 60 + 30


def histogram(
    name: str, labels: Mapping[str, str], bounds: tuple[float, ...], at: float, minutes: int
) -> list[dict[str, str]]:
    """Cumulative bucket counters whose p99 over any window is exactly ``at``: per
    minute 99 observations up to ``at`` (all in its bucket) and one above it."""
    out = []
    for bound in (*bounds, math.inf):
        per_minute = _per_minute(bound, at, 99)
        le = "+Inf" if bound == math.inf else _le(bound)
        out.append(series(f"{name}_bucket", {**labels, "le": le}, f"0+{per_minute}x{minutes}"))
    out.append(series(f"{name}_count", labels, f"0+100x{minutes}"))
    return out


def _le(bound: float) -> str:
    # The "le" label exactly as prometheus_client spells it.
    text: str = floatToGoString(bound)  # type: ignore[no-untyped-call]
    return text


def bound_above(bounds: tuple[float, ...], threshold: float) -> float:
    return next(b for b in bounds if b > threshold)


def bound_at_or_below(bounds: tuple[float, ...], threshold: float) -> float:
    return max(b for b in bounds if b <= threshold)


# -- the alerts --------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Case:
    """Input series and, if it fires, the labels and value it fires with."""

    series: list[dict[str, str]]
    labels: Mapping[str, str] | None = None  # None: must not fire
    value: str = ""  # what {{ $value }} renders as in the annotations
    # Other template pieces of the annotations (a query's) and what they render as.
    texts: Mapping[str, str] = dataclasses.field(default_factory=dict)


# An annotation: fixed, or made from the settings (a query over the rate window, say).
Text = str | Callable[[Config], str]


def annotation(template: Text, config: Config) -> str:
    return template if isinstance(template, str) else template(config)


@dataclasses.dataclass(frozen=True)
class Alert:
    name: str
    severity: str
    expr: Callable[[Config], str]
    summary: str
    description: Text
    # The promtool test data for ``m`` minutes: a firing case, or one just under.
    case: Callable[[Config, int, bool], Case]
    value_format: str = "{{ $value }}"
    # More cases in which it must stay quiet, by name (a limit autosize holds, say).
    quiet: Callable[[Config, int], Mapping[str, Case]] | None = None


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


def _recording(config: Config) -> list[dict[str, str]]:
    w = config.rate
    return [
        {
            "record": "poolwatch:pool_utilisation:ratio",
            "expr": 'sum by (job, instance, pool) (db_client_connection_count{state="used"})\n'
            "/ sum by (job, instance, pool) (db_client_connection_max > 0)",
        },
        {
            "record": "poolwatch:connection_wait_seconds:p99",
            "expr": "histogram_quantile(0.99, sum by (job, instance, pool, le) "
            f"(rate(db_client_connection_wait_time_seconds_bucket[{w}])))",
        },
        {
            "record": "poolwatch:connection_creations:rate",
            "expr": "sum by (job, instance, pool) "
            f"(rate(db_client_connection_create_time_seconds_count[{w}]))",
        },
        {
            "record": "poolwatch:operation_duration_seconds:p99",
            "expr": "histogram_quantile(0.99, sum by (job, route, le) "
            f"(rate(db_client_operation_duration_seconds_bucket[{w}])))",
        },
        {
            "record": "poolwatch:operation_errors:ratio",
            "expr": f"sum by (job, route) (rate(db_client_operation_errors_total[{w}]))\n"
            f"/ sum by (job, route) (rate(db_client_operation_duration_seconds_count[{w}]) > 0)",
        },
        {
            "record": "poolwatch:request_queries:p95",
            "expr": "histogram_quantile(0.95, sum by (job, route, le) "
            f"(rate(poolwatch_request_queries_bucket[{w}])))",
        },
    ]


def _minutes(config: Config, alert: str, extra: int = 0) -> int:
    # Long enough for the rate window, the `for:` and a margin, in 1m steps.
    return (seconds(config.rate) + seconds(config.for_(alert))) // 60 + 4 + extra


def _gauge_case(
    name: str, labels: Mapping[str, str], level: float, minutes: int, *, value: str, fires: bool
) -> Case:
    data = [series(name, labels, f"{level:g}+0x{minutes}")]
    return Case(data, labels if fires else None, value)


def _counter_case(name: str, labels: Mapping[str, str], per_minute: int, minutes: int) -> Case:
    return Case([series(name, labels, f"0+{per_minute}x{minutes}")])


def counter_alert(
    name: str,
    severity: str,
    *,
    metric: str,
    by: str,
    labels: Mapping[str, str],
    summary: str,
    description: str,
) -> Alert:
    def case(c: Config, m: int, fires: bool) -> Case:
        # One event a minute: increase() over the window is the window in minutes.
        per_minute = 1 if fires else 0
        value = f"{seconds(c.rate) / 60:.0f}" if fires else "0"
        case = _counter_case(metric, labels, per_minute, m)
        return Case(case.series, labels if fires else None, value)

    return Alert(
        name,
        severity,
        lambda c: f"sum by ({by}) (increase({metric}[{c.rate}])) > {c.threshold(name):g}",
        summary,
        description,
        case,
        '{{ $value | printf "%.0f" }}',
    )


def _alerts() -> list[Alert]:
    return [*_capacity_alerts(), *_traffic_alerts(), *_autosize_alerts(), *_health_alerts()]


def _capacity_alerts() -> list[Alert]:
    """Alerts on a pool that is full: too small, or in front of a saturated database."""
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
        return _gauge_case(
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


def _traffic_alerts() -> list[Alert]:
    """Alerts on what the app's traffic does to its pools and statements."""
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
            first, then = _per_minute(bound, before, 95), _per_minute(bound, after, 95)
            le = "+Inf" if bound == math.inf else _le(bound)
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
        )
    )

    return a


def _worker(pid: str) -> dict[str, str]:
    """A pool's labels in one worker of a multiprocess app (a ``liveall`` gauge's)."""
    return {**POOL, "pid": pid}


def _ticking(m: int, *, lag: int = 0, until: int | None = None) -> str:
    """Values of a Unix-time gauge set ``lag`` s before every 1m sample (promtool's time
    starts at 0), or only until minute ``until``, then left as it was."""
    if until is None:
        return f"{-lag}+60x{m}"
    return f"{-lag}+60x{until} {60 * until - lag}+0x{m - until - 1}"


def _age(metric: str, *, skip_zero: bool = False) -> str:
    """The age of a pool's Unix-time gauge when it was scraped, the oldest of its
    workers'. timestamp() of a selector is its sample's scrape time, so the age does not
    grow by up to a scrape interval (a minute at Prometheus's default) as ``time() - x``
    does. ``skip_zero`` leaves out series still at 0: a forked worker's copy of a series
    it has not set yet."""
    value = f"({metric} > 0)" if skip_zero else metric
    return f"max by (job, instance, pool) (\n  timestamp({metric})\n  - {value}\n)"


def _failed_reads(c: Config) -> str:
    """A template piece: the failed budget reads of the alert's pool in the rate window,
    queried when the annotation is rendered."""
    query = (
        "sum(increase(poolwatch_autosize_budget_read_errors_total"
        f"{{job=%q, instance=%q, pool=%q}}[{c.rate}]))"
    )
    return (
        f'{{{{ with printf "{query}" $labels.job $labels.instance $labels.pool | query }}}}'
        '{{ . | first | value | printf "%.0f" }}{{ end }}'
    )


def _autosize_alerts() -> list[Alert]:
    """Alerts on autosize: a limit pinned at its ceiling, and autosize that stopped
    working (its controller, its budget reads, its permits)."""
    a: list[Alert] = []

    def ceiling(c: Config, m: int, fires: bool) -> Case:
        target = 40 if fires else 39
        data = [
            series("poolwatch_pool_limit_target", POOL, f"{target}+0x{m}"),
            series("poolwatch_pool_limit_max", POOL, f"40+0x{m}"),
            series("db_client_connection_pending_requests", POOL, f"5+0x{m}"),
        ]
        return Case(data, POOL if fires else None, f"{target}")

    a.append(
        Alert(
            "PoolwatchAutosizeAtCeiling",
            "warning",
            lambda c: (
                "max by (job, instance, pool) (poolwatch_pool_limit_target)\n"
                ">= max by (job, instance, pool) (poolwatch_pool_limit_max)\n"
                "and on (job, instance, pool)\n"
                "sum by (job, instance, pool) (db_client_connection_pending_requests) > "
                f"{c.threshold('PoolwatchAutosizeAtCeiling'):g}"
            ),
            "Autosize of pool {{ $labels.pool }} is pinned at its ceiling",
            "Pool {{ $labels.pool }} ({{ $labels.job }}, {{ $labels.instance }}) has reached "
            "the most connections it may use ({{ $value }}) and requests still wait.",
            ceiling,
        )
    )

    decided = "poolwatch_autosize_last_decision_timestamp_seconds"

    def stalled(c: Config, m: int, fires: bool) -> Case:
        # Two workers: one decides all along; the other stopped after 2 minutes (firing),
        # or decides just under the threshold late at every scrape (quiet).
        if not fires:
            lag = int(c.threshold("PoolwatchAutosizeStalled")) - 1
            return Case([series(decided, _worker("11"), _ticking(m, lag=lag))])
        data = [
            series(decided, _worker("11"), _ticking(m)),
            series(decided, _worker("12"), _ticking(m, until=2)),
        ]
        return Case(data, POOL, humanize_duration(60 * (m - 2)))

    def not_started(c: Config, m: int) -> Mapping[str, Case]:
        # A worker forked from a master that started autosize shows the master's pools
        # at 0 until its own controller starts, at its first acquire.
        data = [
            series(decided, _worker("11"), _ticking(m)),
            series(decided, _worker("12"), f"0+0x{m}"),
        ]
        return {"for a forked worker whose controller has not started": Case(data)}

    a.append(
        Alert(
            "PoolwatchAutosizeStalled",
            "warning",
            lambda c: (
                f"{_age(decided, skip_zero=True)} > {c.threshold('PoolwatchAutosizeStalled'):g}"
            ),
            "Autosize of pool {{ $labels.pool }} on {{ $labels.instance }} stopped deciding",
            "Autosize's controller of pool {{ $labels.pool }} ({{ $labels.job }}, "
            "{{ $labels.instance }}) last decided {{ $value | humanizeDuration }} before the "
            "latest scrape, in one worker at least (it decides every autosize.interval): its "
            "thread, poolwatch-maintenance, died or the process is wedged. The pool's limit, "
            "its budget reads and the leak scan are frozen.",
            stalled,
            "{{ $value | humanizeDuration }}",
            quiet=not_started,
        )
    )

    read = "poolwatch_autosize_budget_last_read_timestamp_seconds"
    failed = "poolwatch_autosize_budget_read_errors_total"

    def unread(c: Config, m: int, fires: bool) -> Case:
        # Reads fail every 5 s (12 a minute). One worker's last read is from minute 2
        # (firing), or just under the threshold old at every scrape (quiet).
        errors = series(failed, POOL, f"0+12x{m}")
        if not fires:
            lag = int(c.threshold("PoolwatchAutosizeBudgetUnread")) - 1
            return Case([series(read, _worker("11"), _ticking(m, lag=lag)), errors])
        data = [
            series(read, _worker("11"), _ticking(m)),
            series(read, _worker("12"), _ticking(m, until=2)),
            errors,
        ]
        texts = {_failed_reads(c): f"{12 * seconds(c.rate) / 60:.0f}"}
        return Case(data, POOL, humanize_duration(60 * (m - 2)), texts)

    def unread_unused(c: Config, m: int) -> Mapping[str, Case]:
        # An asyncio pool is read on the loop of its latest acquire: before the first
        # one there is no read, and nothing to size either. No read failed.
        data = [series(read, _worker("11"), f"60+0x{m}"), series(failed, POOL, f"0+0x{m}")]
        return {"while no read is tried (a pool not used yet)": Case(data)}

    a.append(
        Alert(
            "PoolwatchAutosizeBudgetUnread",
            "warning",
            lambda c: (
                f"{_age(read)} > {c.threshold('PoolwatchAutosizeBudgetUnread'):g}\n"
                "and on (job, instance, pool)\n"
                f"sum by (job, instance, pool) (increase({failed}[{c.rate}])) > 0"
            ),
            "Autosize cannot read the database's connection budget for pool {{ $labels.pool }}",
            lambda c: (
                "The database's connection budget for pool {{ $labels.pool }} "
                "({{ $labels.job }}, {{ $labels.instance }}) was last read "
                "{{ $value | humanizeDuration }} before the latest scrape, in one worker at "
                f"least, and {_failed_reads(c)} reads failed in the last {c.rate}. Until one "
                "succeeds autosize holds the pool's limit within the last budget read: the "
                "pool does not grow. The poolwatch.autosize log says why."
            ),
            unread,
            "{{ $value | humanizeDuration }}",
            quiet=unread_unused,
        )
    )

    orphaned = "poolwatch_autosize_orphaned_permits"

    def orphans(c: Config, m: int, fires: bool) -> Case:
        level = c.threshold("PoolwatchAutosizePermitsOrphaned") + (2 if fires else 0)
        return _gauge_case(orphaned, POOL, level, m, value=f"{level:g}", fires=fires)

    def orphans_briefly(c: Config, m: int) -> Mapping[str, Case]:
        # Out for a minute less than the `for:`: still pending at the evaluation.
        held = seconds(c.for_("PoolwatchAutosizePermitsOrphaned")) // 60 - 1
        data = [series(orphaned, POOL, f"0+0x{m - held - 1} 1+0x{held}")]
        return {"for less than its for:": Case(data)}

    a.append(
        Alert(
            "PoolwatchAutosizePermitsOrphaned",
            "warning",
            lambda c: (
                f"max by (job, instance, pool) ({orphaned}) > "
                f"{c.threshold('PoolwatchAutosizePermitsOrphaned'):g}"
            ),
            "Autosize permits of pool {{ $labels.pool }} are held by nobody",
            "{{ $value }} autosize permits of pool {{ $labels.pool }} ({{ $labels.job }}, "
            "{{ $labels.instance }}) are out with no checkout, acquire or return behind "
            "them: the pool's limit counts connections nobody can use. Connections taken "
            "around poolwatch, or a poolwatch bug; the poolwatch.autosize log says when.",
            orphans,
            quiet=orphans_briefly,
        )
    )
    return a


def _health_alerts() -> list[Alert]:
    """Alerts on leaked and lost connections and poolwatch's own health."""
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
        return _gauge_case("poolwatch_pool_drift", POOL, level, m, value=f"{level:g}", fires=fires)

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
        return _gauge_case("up", labels, 0 if fires else 1, m, value="0", fires=fires)

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


ALERTS = _alerts()


def _anchor(name: str) -> str:
    return name.lower()


def build_rules(config: Config) -> dict[str, Any]:
    """The rule file, as data."""
    alerting = []
    for alert in ALERTS:
        alerting.append(
            {
                "alert": alert.name,
                "expr": alert.expr(config),
                "for": config.for_(alert.name),
                "labels": {"severity": alert.severity},
                "annotations": {
                    "summary": alert.summary,
                    "description": annotation(alert.description, config),
                    "runbook_url": f"{config.runbook}#{_anchor(alert.name)}",
                },
            }
        )
    return {
        "groups": [
            {"name": "poolwatch.recording", "rules": _recording(config)},
            {"name": "poolwatch.alerts", "rules": alerting},
        ]
    }


def _render(template: str, labels: Mapping[str, str], case: Case, value_format: str) -> str:
    rendered = template
    for piece, shown in case.texts.items():  # first: a query's piece names labels too
        rendered = rendered.replace(piece, shown)
    rendered = rendered.replace(value_format, case.value)
    for key, label in labels.items():
        rendered = rendered.replace(f"{{{{ $labels.{key} }}}}", label)
    return rendered


def build_tests(config: Config) -> dict[str, Any]:
    """promtool unit tests: per alert, a firing case and one just under its threshold."""
    tests = []
    for alert in ALERTS:
        span = _minutes(config, alert.name)  # minutes of input series
        minutes = span  # when the rule is evaluated
        if alert.name == "PoolwatchQueriesPerRequestJump":
            minutes += _jump_lead(config)
        cases = [("fires", alert.case(config, span, True))]
        cases.append(("stays quiet", alert.case(config, span, False)))
        if alert.quiet is not None:
            cases += [(f"stays quiet {why}", c) for why, c in alert.quiet(config, span).items()]
        for kind, case in cases:
            expected = []
            if case.labels is not None:
                labels = {**case.labels, "severity": alert.severity}
                expected.append(
                    {
                        "exp_labels": labels,
                        "exp_annotations": {
                            "summary": _render(alert.summary, labels, case, alert.value_format),
                            "description": _render(
                                annotation(alert.description, config),
                                labels,
                                case,
                                alert.value_format,
                            ),
                            "runbook_url": f"{config.runbook}#{_anchor(alert.name)}",
                        },
                    }
                )
            tests.append(
                {
                    "name": f"{alert.name} {kind}",
                    "interval": "1m",
                    "input_series": case.series,
                    "alert_rule_test": [
                        {
                            "alertname": alert.name,
                            "eval_time": f"{minutes}m",
                            "exp_alerts": expected,
                        }
                    ],
                }
            )
    return {"rule_files": [RULES], "evaluation_interval": "1m", "tests": tests}


def dump(data: Mapping[str, Any], header: str) -> str:
    class Literal(yaml.SafeDumper):
        pass

    def strings(dumper: yaml.SafeDumper, text: str) -> yaml.ScalarNode:
        style = "|" if "\n" in text else None
        return dumper.represent_scalar("tag:yaml.org,2002:str", text, style=style)

    Literal.add_representer(str, strings)
    body: str = yaml.dump(
        dict(data), Dumper=Literal, sort_keys=False, width=200, allow_unicode=True
    )
    return header + body


HEADER = "# Generated by `python -m alerts.build` from alerts/settings.toml: edit that, not this.\n"


def outputs(config: Config, with_tests: bool) -> dict[str, str]:
    files = {RULES: dump(build_rules(config), HEADER)}
    if with_tests:
        files[TESTS] = dump(build_tests(config), HEADER)
    return files


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--profile", help="a [profiles.<name>] of settings.toml, e.g. fast")
    parser.add_argument("--out", type=Path, default=HERE)
    parser.add_argument("--check", action="store_true", help="compare, do not write")
    args = parser.parse_args(argv)
    config = load(profile=args.profile)
    files = outputs(config, with_tests=args.profile is None)
    stale = []
    for name, text in files.items():
        path = args.out / name
        if args.check:
            if not path.exists() or path.read_text() != text:
                stale.append(str(path))
        else:
            args.out.mkdir(parents=True, exist_ok=True)
            path.write_text(text)
    if stale:
        print("out of date (run python -m alerts.build): " + ", ".join(stale), file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
