"""Alerts on autosize: a limit pinned at its ceiling, and autosize that stopped working
(its controller, its budget reads, its permits)."""

from __future__ import annotations

from collections.abc import Mapping

from alerts.humanize import humanize_duration
from alerts.model import Alert, Case, gauge_case
from alerts.series import POOL, series
from alerts.settings import Config, seconds

__all__ = ["alerts"]


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


def alerts() -> list[Alert]:
    """The group's alerts, in the order of the rule file."""
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
        return gauge_case(orphaned, POOL, level, m, value=f"{level:g}", fires=fires)

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
