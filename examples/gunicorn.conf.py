"""gunicorn settings for an app instrumented with poolwatch: several workers, one scrape.

    mkdir -p /run/myapp-metrics
    PROMETHEUS_MULTIPROC_DIR=/run/myapp-metrics gunicorn -c gunicorn.conf.py myapp:app

PROMETHEUS_MULTIPROC_DIR must be in the environment before gunicorn starts (every
process imports prometheus_client, which decides then where metric values live). With it,
any worker answers /metrics with the sum over all workers; pool gauges are summed over
the workers alive. The two lines poolwatch needs are ``child_exit`` below.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from prometheus_client import multiprocess

worker_class = "uvicorn.workers.UvicornWorker"
workers = int(os.environ.get("WEB_CONCURRENCY", "3"))


def on_starting(server: Any) -> None:
    """Start from an empty directory: files of an earlier run's workers would be summed."""
    for stale in Path(os.environ["PROMETHEUS_MULTIPROC_DIR"]).glob("*.db"):
        stale.unlink()


def child_exit(server: Any, worker: Any) -> None:
    """A worker exited: drop its gauges (its counters stay in the sums)."""
    multiprocess.mark_process_dead(worker.pid)
