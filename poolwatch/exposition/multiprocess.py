"""Several worker processes (gunicorn, ``uvicorn --workers``), one scrape.

With ``PROMETHEUS_MULTIPROC_DIR`` set before ``prometheus_client`` is imported, every
counter and histogram of every worker is kept in files in that directory; a scrape, in
whichever worker (or the gunicorn master) it lands, reads all of them.

Pool gauges need one more step. Their values live in each worker's own pool, so a scrape
served by worker A cannot read worker B's pool. Each worker therefore writes its pool
gauges to the shared files: whenever a connection is taken or returned, every
``REFRESH_SECONDS`` from a daemon thread (a driver may count a returned connection a
moment after poolwatch hears of it), and, in the worker serving a scrape, just before it
renders. They are ``livesum`` gauges, summed over the workers that are alive.
gunicorn's ``child_exit`` hook calls ``mark_process_dead``, which drops a dead worker's
gauge files; its counters stay in the sums, as counters must.
"""

from __future__ import annotations

import contextlib
import os
import threading
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import NamedTuple

from prometheus_client import CollectorRegistry, Gauge
from prometheus_client import values as prometheus_values
from prometheus_client.metrics_core import Metric
from prometheus_client.multiprocess import MultiProcessCollector, mark_process_dead
from prometheus_client.registry import Collector

from poolwatch.errors import ConfigError
from poolwatch.exposition.collectors import DRIFT_HELP, DRIFT_NAME
from poolwatch.pools.reading import PoolSource, read_pool

__all__ = [
    "MultiprocessExposition",
    "PoolGauges",
    "Refresher",
    "SharedFiles",
    "multiprocess_dir",
    "share_files",
]

_UNTYPED = "db_client_connection_count"
REFRESH_SECONDS = 0.5


def multiprocess_dir(environ: Mapping[str, str]) -> str | None:
    """The multiprocess directory prometheus_client uses, if any."""
    return environ.get("PROMETHEUS_MULTIPROC_DIR") or environ.get("prometheus_multiproc_dir")


class PoolGauges:
    """``db_client_connection_count``, ``_max``, ``_pending_requests`` and
    ``poolwatch_pool_drift`` as livesum gauges."""

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

        self.drift = Gauge(
            DRIFT_NAME, DRIFT_HELP, ["pool"], registry=registry, multiprocess_mode="livesum"
        )

    def write(self, source: PoolSource) -> None:
        """Write this worker's view of one pool to the shared files."""
        try:
            reading = read_pool(source)
            if reading is None:  # no pool right now: its gauges leave the files
                self._remove(source.name)
                return
            self.count.labels(source.name, "idle").set(reading.idle)
            self.count.labels(source.name, "used").set(reading.used)
            if reading.max is not None:
                self.max.labels(source.name).set(reading.max)
            self.pending.labels(source.name).set(reading.pending)
            self.drift.labels(source.name).set(reading.drift)
        except Exception:
            self._on_error("collector")

    def _remove(self, pool: str) -> None:
        for gauge, labels in (
            (self.count, (pool, "idle")),
            (self.count, (pool, "used")),
            (self.max, (pool,)),
            (self.pending, (pool,)),
            (self.drift, (pool,)),
        ):
            with contextlib.suppress(KeyError):  # never written
                gauge.remove(*labels)

    def write_all(self, sources: Iterable[PoolSource]) -> None:
        """Write every pool of this worker."""
        for source in sources:
            self.write(source)


class Refresher:
    """Writes a worker's pool gauges every ``interval`` seconds from a daemon thread.

    Started on the first pool event in each process (a thread does not survive gunicorn's
    fork, and the app may be imported before it), so :meth:`ensure` is cheap to call often.
    """

    def __init__(self, refresh: Callable[[], None], interval: float = REFRESH_SECONDS) -> None:
        self._refresh = refresh
        self._interval = interval
        self._pid = 0
        self._stop = threading.Event()

    def ensure(self) -> None:
        """Start the thread in this process unless it runs already."""
        if self._pid == os.getpid():
            return
        self._pid = os.getpid()
        self._stop = threading.Event()
        thread = threading.Thread(target=self._run, name="poolwatch-gauges", daemon=True)
        thread.start()

    def stop(self) -> None:
        """Stop the thread (at uninstrument)."""
        self._stop.set()

    def _run(self) -> None:
        stop = self._stop
        while not stop.wait(self._interval):
            self._refresh()


def forget_dead_workers(path: str) -> None:
    """Drop the live gauges of processes that no longer exist.

    gunicorn's ``child_exit`` hook does this at once; ``uvicorn --workers`` has no such
    hook, so each scrape also looks for gauge files of processes that are gone.
    """
    pids: set[int] = set()
    for name in os.listdir(path):
        if name.startswith("gauge_live") and name.endswith(".db"):
            digits = name[: -len(".db")].rpartition("_")[2]
            if digits.isdigit():
                pids.add(int(digits))
    for pid in pids:
        if not _alive(pid):
            mark_process_dead(pid, path)  # type: ignore[no-untyped-call]


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, owned by someone else
        return True
    return True


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
        forget_dead_workers(self._path)
        registry = CollectorRegistry()
        registry.register(_AllWorkers(self._path))
        return registry


class SharedFiles(NamedTuple):
    """What a PoolWatch in multiprocess mode keeps: its pool gauges (in the shared files),
    the registry a scrape renders (every worker's files), and the refresher thread."""

    gauges: PoolGauges
    render: MultiprocessExposition
    refresher: Refresher


def share_files(
    registry: CollectorRegistry,
    shared_dir: str,
    on_error: Callable[[str], None],
    sources: Callable[[], Iterable[PoolSource]],
) -> SharedFiles:
    """Keep pool gauges in the shared files and render scrapes from every worker's.

    Raises :class:`~poolwatch.ConfigError` when ``shared_dir`` is not a directory, or when
    prometheus_client was imported before the variable was set (it picks where values
    live once, at import).
    """
    if not os.path.isdir(shared_dir):
        raise ConfigError("PROMETHEUS_MULTIPROC_DIR", shared_dir, "must be an existing directory")
    if prometheus_values.ValueClass is prometheus_values.MutexValue:
        raise ConfigError(
            "PROMETHEUS_MULTIPROC_DIR",
            shared_dir,
            "was set after prometheus_client was imported; set it before the process "
            "starts (gunicorn: raw_env or the environment)",
        )
    gauges = PoolGauges(registry, on_error)

    def write_all() -> None:
        gauges.write_all(sources())

    return SharedFiles(gauges, MultiprocessExposition(shared_dir, write_all), Refresher(write_all))
