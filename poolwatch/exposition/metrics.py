"""Every metric poolwatch exports: names, types, labels and buckets.

Names, types and labels follow the OpenTelemetry database-client conventions as
Prometheus spells them; they are a contract that dashboards and alert rules rely on.
Values that live in the pool itself (connections used, idle, max) are not here: they are
read from the pool when Prometheus scrapes (:mod:`.collectors`).
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge

from poolwatch.exposition.histogram import LabelledHistogram, histogram

__all__ = ["COMPONENTS", "Metrics"]

# Waiting for a pooled connection is normally tens of microseconds; the interesting change
# is when it becomes milliseconds, so the low end is dense.
WAIT_BUCKETS = (
    0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05,
    0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
)  # fmt: skip
# A checkout lasts from one query (sub-millisecond) to a long transaction or a leak.
USE_BUCKETS = (
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5,
    1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0,
)  # fmt: skip
# Opening a connection: a local socket takes ~1 ms, TLS across a network 10-100 ms.
CREATE_BUCKETS = (
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
)  # fmt: skip
# A primary-key lookup on a local database is ~50 us; a slow query is seconds.
QUERY_BUCKETS = (
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1,
    0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
)  # fmt: skip
# OpenTelemetry's recommended HTTP server buckets.
HTTP_BUCKETS = (
    0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0,
)  # fmt: skip
# Queries per request: 1-3 is healthy, tens is a loop, hundreds an N+1 storm.
QUERIES_BUCKETS = (0, 1, 2, 3, 5, 10, 20, 50, 100, 200, 500, 1000)


# The parts of poolwatch that count their own faults (the ``component`` label).
COMPONENTS = (
    "autosize", "budget", "collector", "detection", "eager_loads", "exposition", "hints",
    "leaks", "lifespan", "middleware", "pool", "query", "scope", "sqlalchemy", "tracing",
)  # fmt: skip


class Metrics:
    """The metric objects of one PoolWatch, registered in one registry."""

    def __init__(self, registry: CollectorRegistry, *, multiprocess: bool = False) -> None:
        self.registry = registry

        def timed(
            name: str, documentation: str, labels: list[str], buckets: tuple[float, ...]
        ) -> LabelledHistogram:
            return histogram(
                name, documentation, labels, buckets, registry, multiprocess=multiprocess
            )

        self.connection_timeouts = Counter(
            "db_client_connection_timeouts",
            "Acquire attempts that timed out waiting for a pooled connection.",
            ["pool"],
            registry=registry,
        )
        self.connection_wait_time = timed(
            "db_client_connection_wait_time_seconds",
            "Time spent waiting for a pooled connection (opening a new one excluded).",
            ["pool"],
            WAIT_BUCKETS,
        )
        self.connection_use_time = timed(
            "db_client_connection_use_time_seconds",
            "Time a connection was checked out of the pool, from acquire to release.",
            ["pool"],
            USE_BUCKETS,
        )
        self.connection_idle_time = timed(
            "poolwatch_connection_idle_seconds",
            "Time a checked-out connection ran no statement (its hold less its statements' "
            "time), by the route that took it: a connection held across other awaits.",
            ["pool", "route"],
            USE_BUCKETS,
        )
        self.transactions = Counter(
            "poolwatch_transactions",
            "Transactions that ended, by the route that ran them and outcome: commit; "
            "rollback (the application rolled back); error (rolled back because an "
            "exception left the transaction's block, or its COMMIT failed); closed (ended "
            "by closing the connection or session without a commit: SQLAlchemy's "
            "implicit transactions, reads, or writes discarded).",
            ["pool", "route", "outcome"],
            registry=registry,
        )
        self.transaction_duration = timed(
            "poolwatch_transaction_duration_seconds",
            "Time from a transaction's BEGIN to its end, by route.",
            ["pool", "route"],
            USE_BUCKETS,
        )
        self.connection_create_time = timed(
            "db_client_connection_create_time_seconds",
            "Time taken to open a new database connection.",
            ["pool"],
            CREATE_BUCKETS,
        )
        self.operation_duration = timed(
            "db_client_operation_duration_seconds",
            "Duration of database statements, from send to result, by route.",
            ["pool", "operation", "route"],
            QUERY_BUCKETS,
        )
        self.operation_errors = Counter(
            "db_client_operation_errors",
            "Database statements that raised an error.",
            ["pool", "operation", "route"],
            registry=registry,
        )
        self.http_duration = timed(
            "http_server_request_duration_seconds",
            "Duration of HTTP requests, until the response was sent.",
            ["method", "route", "status"],
            HTTP_BUCKETS,
        )
        self.request_queries = timed(
            "poolwatch_request_queries",
            "Database statements issued per request (or per poolwatch.scope block).",
            ["route"],
            QUERIES_BUCKETS,
        )
        self.nplusone = Counter(
            "poolwatch_nplusone",
            "Requests (or scopes) with at least one N+1 query pattern.",
            ["route"],
            registry=registry,
        )
        self.duplicate_queries = Counter(
            "poolwatch_duplicate_queries",
            "Requests (or scopes) that ran one statement with the same parameters twice.",
            ["route"],
            registry=registry,
        )
        self.unused_eager_loads = Counter(
            "poolwatch_unused_eager_loads",
            "Requests (or scopes) with at least one eager load whose relation nothing read.",
            ["route"],
            registry=registry,
        )
        self.slow_queries = Counter(
            "poolwatch_slow_queries",
            "Statements that took longer than the slow-query threshold.",
            ["route"],
            registry=registry,
        )
        self.pool_resizes = Counter(
            "poolwatch_pool_resizes",
            "Changes of a pool's effective limit by autosize, by direction (up or down).",
            ["pool", "direction"],
            registry=registry,
        )
        self.pool_limit_target = Gauge(
            "poolwatch_pool_limit_target",
            "The effective connection limit autosize chose for the pool.",
            ["pool"],
            registry=registry,
            multiprocess_mode="livesum",
        )
        self.pool_limit_max = Gauge(
            "poolwatch_pool_limit_max",
            "The most connections autosize may allow the pool now (its max, or the "
            "database budget when lower).",
            ["pool"],
            registry=registry,
            multiprocess_mode="livesum",
        )
        # Autosize's own health: a controller that stopped deciding, a budget that is
        # not read, permits held by nobody all leave the pool's limit wrong, silently.
        self.autosize_decided = Gauge(
            "poolwatch_autosize_last_decision_timestamp_seconds",
            "When autosize's controller last decided the pool's limit (Unix time); it "
            "decides every autosize.interval while it runs.",
            ["pool"],
            registry=registry,
            multiprocess_mode="liveall",  # each live worker its own: one stalls alone
        )
        self.autosize_budget_read = Gauge(
            "poolwatch_autosize_budget_last_read_timestamp_seconds",
            "When the database's connection budget was last read for the pool (Unix time; "
            "autosize's start until the first read). Pools whose budget is not read "
            "(autosize.budget set, or no PostgreSQL) have no series.",
            ["pool"],
            registry=registry,
            multiprocess_mode="liveall",  # each live worker its own: one stalls alone
        )
        self.autosize_budget_errors = Counter(
            "poolwatch_autosize_budget_read_errors",
            "Reads of the database's connection budget that failed; until one succeeds "
            "autosize keeps the limit within the last budget read.",
            ["pool"],
            registry=registry,
        )
        self.autosize_orphaned_permits = Gauge(
            "poolwatch_autosize_orphaned_permits",
            "Autosize permits out for 5 s or more with no checkout, acquire or return "
            "behind them: connections the pool's limit counts but nobody can use.",
            ["pool"],
            registry=registry,
            multiprocess_mode="livesum",
        )
        self.connection_leaks = Counter(
            "poolwatch_connection_leaks",
            "Connections held past the leak threshold, by the route that took them.",
            ["pool", "route"],
            registry=registry,
        )
        self.connections_reclaimed = Counter(
            "poolwatch_connections_reclaimed",
            "Connections taken by an acquire that then failed (cancelled or timed out "
            "after the hand-over), given back to the pool by poolwatch, by outcome "
            "(returned; closed, its slot back in the pool; or failed: it may be lost).",
            ["pool", "outcome"],
            registry=registry,
        )
        self.internal_errors = Counter(
            "poolwatch_internal_errors",
            "Exceptions raised inside poolwatch itself, counted and swallowed.",
            ["component"],
            registry=registry,
        )

        # Present at zero from the start, so rate() and alerts work before the first fault.
        for component in COMPONENTS:
            self.internal_errors.labels(component)

    def count_internal_error(self, component: str) -> None:
        """Add one to ``poolwatch_internal_errors_total{component}``."""
        self.internal_errors.labels(component).inc()
