"""The pool gauges, read from each pool at scrape time: :class:`PoolStateCollector`.

Values that live in the pool itself (connections used, idle, max) are read from the
driver when Prometheus scrapes, not copied on every event; beside them, poolwatch's own
count of waiters and the drift between its checkouts and the driver's
(:mod:`poolwatch.pools.reconcile`).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from typing import NamedTuple

from prometheus_client.core import GaugeMetricFamily, Metric, UnknownMetricFamily
from prometheus_client.registry import Collector

from poolwatch.events import PoolState
from poolwatch.pools.reconcile import drift

__all__ = [
    "DRIFT_HELP",
    "DRIFT_NAME",
    "PoolReading",
    "PoolSource",
    "PoolStateCollector",
    "read_pool",
]

DRIFT_NAME = "poolwatch_pool_drift"
DRIFT_HELP = (
    "Connections the driver has in use that poolwatch saw no checkout for (positive), or "
    "checkouts poolwatch holds that the driver has back (negative); 0 when they agree."
)


class PoolSource:
    """One pool as the collector sees it: its probe and poolwatch's own counts."""

    __slots__ = ("checked_out", "name", "pending", "probe", "returning")

    def __init__(
        self,
        name: str,
        probe: Callable[[], PoolState | None],
        pending: Callable[[], int],
        checked_out: Callable[[], int],
        returning: Callable[[], int] = lambda: 0,
    ) -> None:
        self.name = name
        self.probe = probe
        self.pending = pending
        self.checked_out = checked_out
        self.returning = returning


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


class PoolReading(NamedTuple):
    """One pool's gauges, as exposed."""

    used: int
    idle: int
    max: int | None
    pending: int
    drift: int = 0


def read_pool(source: PoolSource) -> PoolReading:
    """Read a pool: the driver's own counts where it has them, poolwatch's otherwise, and
    how far poolwatch's own count of checkouts is from the driver's (see :mod:`reconcile`).
    """
    state = source.probe()
    waiting = source.pending()
    own = source.checked_out()
    if state is None or state.used is None:  # nothing to compare with
        idle = 0 if state is None or state.idle is None else state.idle
        return PoolReading(own, idle, None if state is None else state.max, waiting)
    idle = 0 if state.idle is None else state.idle
    off = drift(state.used, own, waiting, source.returning())
    return PoolReading(state.used, idle, state.max, waiting, off)
