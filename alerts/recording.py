"""The recording rules: utilisation, p99 waits and latencies, rates the alerts read."""

from __future__ import annotations

from alerts.settings import Config

__all__ = ["rules"]


def rules(config: Config) -> list[dict[str, str]]:
    """The recording rules, over the settings' rate window."""
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
