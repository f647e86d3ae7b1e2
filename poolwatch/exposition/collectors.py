"""The pool gauges, read from each pool at scrape time: :class:`PoolStateCollector`.

Values that live in the pool itself (connections used, idle, max) are read from the
driver when Prometheus scrapes, not copied on every event; beside them, poolwatch's own
count of waiters and the drift between its checkouts and the driver's, as
:func:`poolwatch.pools.reading.read_pool` reads them.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator

from prometheus_client.core import GaugeMetricFamily, Metric, UnknownMetricFamily
from prometheus_client.registry import Collector

from poolwatch.pools.reading import PoolSource, read_pool

__all__ = ["DRIFT_HELP", "DRIFT_NAME", "PoolStateCollector"]

DRIFT_NAME = "poolwatch_pool_drift"
DRIFT_HELP = (
    "Connections the driver has in use that poolwatch saw no checkout for (positive), or "
    "checkouts poolwatch holds that the driver has back (negative); 0 when they agree."
)


class PoolStateCollector(Collector):
    """Renders ``db_client_connection_count``, ``_max``, ``_pending_requests`` and
    ``poolwatch_pool_drift``.

    Read from each pool at scrape time. A pool that fails to report is counted as an
    internal error and left out of that scrape, rather than failing the whole scrape.
    """

    def __init__(
        self, sources: Callable[[], Iterable[PoolSource]], on_error: Callable[[str], None]
    ) -> None:
        self._sources = sources
        self._on_error = on_error

    def describe(self) -> Iterator[Metric]:
        return iter(self._families())

    def _families(
        self,
    ) -> tuple[UnknownMetricFamily, GaugeMetricFamily, GaugeMetricFamily, GaugeMetricFamily]:
        return (
            # A gauge in meaning, exposed untyped: the name is fixed by the OpenTelemetry
            # convention, and promtool's linter reserves a "_count" suffix for histograms
            # and summaries in every typed family (it exempts only untyped ones).
            UnknownMetricFamily(
                "db_client_connection_count",
                "Connections in the pool, by state (idle or used); a gauge.",
                labels=["pool", "state"],
            ),
            GaugeMetricFamily(
                "db_client_connection_max",
                "Maximum number of connections the pool allows now.",
                labels=["pool"],
            ),
            GaugeMetricFamily(
                "db_client_connection_pending_requests",
                "Requests waiting for a connection from the pool.",
                labels=["pool"],
            ),
            GaugeMetricFamily(
                DRIFT_NAME,
                DRIFT_HELP,
                labels=["pool"],
            ),
        )

    def collect(self) -> Iterator[Metric]:
        count, limit, pending, drift = self._families()
        for source in self._sources():
            try:
                reading = read_pool(source)
            except Exception:
                self._on_error("collector")
                continue
            if reading is None:  # no pool right now: no gauges
                continue
            count.add_metric([source.name, "idle"], reading.idle)
            count.add_metric([source.name, "used"], reading.used)
            if reading.max is not None:
                limit.add_metric([source.name], reading.max)
            pending.add_metric([source.name], reading.pending)
            drift.add_metric([source.name], reading.drift)
        yield count
        yield limit
        yield pending
        yield drift
