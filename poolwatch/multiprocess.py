"""Several worker processes (gunicorn, ``uvicorn --workers``), one scrape.

With ``PROMETHEUS_MULTIPROC_DIR`` set before ``prometheus_client`` is imported, every
counter and histogram of every worker is kept in files in that directory; a scrape, in
whichever worker (or the gunicorn master) it lands, reads all of them.

Pool gauges need one more step. Their values live in each worker's own pool, so a scrape
served by worker A cannot read worker B's pool. Each worker therefore writes its pool
gauges to the shared files whenever a connection is taken or returned (and the scraping
worker once more before it renders): ``livesum`` gauges, summed over the workers that are
alive. gunicorn's ``child_exit`` hook calls ``mark_process_dead``, which drops a dead
worker's gauge files; its counters stay in the sums, as counters must.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Iterator, Mapping

from prometheus_client import CollectorRegistry, Gauge
from prometheus_client.metrics_core import Metric
from prometheus_client.multiprocess import MultiProcessCollector
from prometheus_client.registry import Collector

from poolwatch.metrics import PoolSource, read_pool

__all__ = ["MultiprocessExposition", "PoolGauges", "multiprocess_dir"]

_UNTYPED = "db_client_connection_count"


def multiprocess_dir(environ: Mapping[str, str]) -> str | None:
    """The multiprocess directory prometheus_client uses, if any."""
    return environ.get("PROMETHEUS_MULTIPROC_DIR") or environ.get("prometheus_multiproc_dir")


class PoolGauges:
    """``db_client_connection_count``, ``_max`` and ``_pending_requests`` as livesum gauges."""

    def __init__(self, registry: CollectorRegistry, on_error: Callable[[str], None]) -> None:
        self._on_error = on_error
        self.count = Gauge(
            "db_client_connection_count",
            "Connections in the pool, by state (idle or used); a gauge.",
            ["pool", "state"],
            registry=registry,
            multiprocess_mode="livesum",
        )
        self.max = Gauge(
            "db_client_connection_max",
            "Maximum number of connections the pool allows now.",
            ["pool"],
            registry=registry,
            multiprocess_mode="livesum",
        )
        self.pending = Gauge(
            "db_client_connection_pending_requests",
            "Requests waiting for a connection from the pool.",
            ["pool"],
            registry=registry,
            multiprocess_mode="livesum",
        )

    def write(self, source: PoolSource) -> None:
        """Write this worker's view of one pool to the shared files."""
        try:
            reading = read_pool(source)
            self.count.labels(source.name, "idle").set(reading.idle)
            self.count.labels(source.name, "used").set(reading.used)
            if reading.max is not None:
                self.max.labels(source.name).set(reading.max)
            self.pending.labels(source.name).set(reading.pending)
        except Exception:
            self._on_error("collector")

    def write_all(self, sources: Iterable[PoolSource]) -> None:
        """Write every pool of this worker."""
        for source in sources:
            self.write(source)


class _AllWorkers(Collector):
    """Every worker's files, with the connection count untyped as in single-process mode."""

    def __init__(self, path: str) -> None:
        self._files = MultiProcessCollector(None, path)  # type: ignore[no-untyped-call]

    def collect(self) -> Iterator[Metric]:
        for metric in self._files.collect():  # type: ignore[no-untyped-call]
            if metric.name == _UNTYPED:
                metric.type = "unknown"
            yield metric


class MultiprocessExposition:
    """Makes the registry a scrape renders: this worker's gauges fresh, all workers read."""

    def __init__(self, path: str, refresh: Callable[[], None]) -> None:
        if not os.path.isdir(path):
            raise ValueError(f"PROMETHEUS_MULTIPROC_DIR={path!r}: not a directory")
        self._path = path
        self._refresh = refresh

    def __call__(self) -> CollectorRegistry:
        self._refresh()
        registry = CollectorRegistry()
        registry.register(_AllWorkers(self._path))
        return registry
