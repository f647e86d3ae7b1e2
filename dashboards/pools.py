"""The **Pools** dashboard: utilisation, connections, waiting, acquire wait, hold and
creation times, time held idle, transactions, timeouts, autosize and whether it still
works, leaks, unaccounted connections and give-backs."""

from __future__ import annotations

from dashboards.panel import POOL, RATE, Panel, Query, quantiles

__all__ = ["panels"]


def _age(metric: str, legend: str) -> Query:
    """How old a pool's Unix-time gauge was when scraped, the oldest of its workers'
    (timestamp() is the scrape's time: no sawtooth of the scrape interval; a forked
    worker's copy still at 0 is left out)."""
    selector = f"{metric}{{{POOL}}}"
    return Query(
        f"max by (instance, pool) (timestamp({selector}) - ({selector} > 0))",
        f"{legend} {{{{instance}}}} {{{{pool}}}}",
    )


def panels() -> list[Panel]:
    """The dashboard's panels, in their order."""
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
            quantiles("db_client_connection_wait_time_seconds", POOL, "pool", "{{pool}}"),
        ),
        Panel(
            "Hold time p50 / p95 / p99",
            "Time a connection stayed checked out, from acquire to release: long holds "
            "(transactions around external calls) starve the pool without query load.",
            "s",
            quantiles("db_client_connection_use_time_seconds", POOL, "pool", "{{pool}}"),
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
            quantiles("poolwatch_transaction_duration_seconds", POOL, "pool", "{{pool}}"),
        ),
        Panel(
            "Creation time p50 / p95 / p99",
            "Time to open a new database connection.",
            "s",
            quantiles("db_client_connection_create_time_seconds", POOL, "pool", "{{pool}}"),
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
