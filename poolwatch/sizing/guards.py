"""Per-PoolWatch wiring of gates, sizers and the maintenance task.

An adapter asks :meth:`Guards.gate_for` once per pool, when it first sees the pool's
driver. The answer is ``None`` unless something must stand in front of that pool's
acquire: autosize (a limiter), an acquire timeout, leak detection (checkout tracking).
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Callable

from poolwatch import forksafe
from poolwatch.config import Settings
from poolwatch.errors import ConfigError
from poolwatch.exposition.metrics import Metrics
from poolwatch.pools.holders import Holders
from poolwatch.pools.observer import PoolObserver
from poolwatch.queries.callsite import CallSiteFinder
from poolwatch.queries.recorder import UNKNOWN_SITE
from poolwatch.safety import FaultReporter
from poolwatch.sizing.gate import Gate
from poolwatch.sizing.limiter import AsyncLimiter, ThreadLimiter
from poolwatch.sizing.maintenance import Maintenance
from poolwatch.sizing.settings import Autosize
from poolwatch.sizing.sizer import PoolSizer, ReadLimits

__all__ = ["Guards"]

logger = logging.getLogger("poolwatch.autosize")

# Frames between CallSiteFinder.find and the adapter: the lambda below, the observer's
# acquire_succeeded, the adapter's acquire wrapper.
_SITE_SKIP = 3


class Guards:
    """The gates and sizers of one PoolWatch's pools."""

    def __init__(
        self,
        settings: Settings,
        metrics: Metrics,
        faults: FaultReporter,
        finder: CallSiteFinder,
        observers: Callable[[], list[PoolObserver]],
    ) -> None:
        self._settings = settings
        self._metrics = metrics
        self._finder = finder
        self.gates: dict[str, Gate] = {}
        self.sizers: dict[str, PoolSizer] = {}
        self.maintenance = Maintenance(
            faults,
            leak_threshold=settings.leak_threshold,
            count_leak=lambda pool, route: metrics.connection_leaks.labels(pool, route).inc(),
        )
        self.maintenance.observers = observers
        self.maintenance.sizers = self.sizers
        self._report = _MetricsReport(metrics)

    def gate_for(
        self,
        observer: PoolObserver,
        *,
        autosize: Autosize | None,
        pool_max: int | None,
        open_connections: Callable[[], int],
        read_limits: ReadLimits | None = None,
        tag: str | None = None,
        threads: bool = False,
        keep: int = 0,
    ) -> Gate | None:
        """The gate of ``observer``'s pool (made once), or ``None`` if it needs none.

        ``threads``: the pool is used from threads (sync SQLAlchemy), not an event loop.
        ``tag``: the application_name tag of the pool's connections (see
        :mod:`poolwatch.sizing.appname`), if they carry one.
        ``keep``: the driver's minimum size (connections above the limit are closed only
        down to it; the driver would open them again).
        """
        name = observer.name
        known = self.gates.get(name)
        if known is not None:
            return known
        timeout = self._settings.acquire_timeout
        if autosize is None and timeout is None:
            return None
        if observer.holders is None:  # the timeout's message names the longest holders
            observer.holders = Holders()
        limiter: AsyncLimiter | ThreadLimiter | None = None
        if autosize is not None:
            try:
                lower, upper = autosize.bounds(pool_max)
            except ConfigError as exc:
                if pool_max is None:
                    raise
                # A pool met at its first use (a Tortoise connection) cannot fail the app
                # the way a bad setting fails instrument_*: said once, and kept in bounds.
                logger.error("pool %s: %s; autosize uses %d", name, exc, pool_max)
                lower, upper = min(autosize.min, pool_max), pool_max
            start = autosize.initial or lower
            # A sync pool is used from threads; anything else waits on an event loop.
            limiter = ThreadLimiter(start) if threads else AsyncLimiter(start)
            forksafe.forget_in_child(limiter)
            sizer = self.sizers[name] = PoolSizer(
                observer,
                limiter,
                autosize,
                (lower, upper),
                report=self._report,
                open_connections=open_connections,
                read_limits=read_limits if autosize.budget is None else None,
                tag=tag,
            )
            self._report.started(sizer)
            if keep > lower:
                logger.warning(
                    "pool %s: the driver keeps at least %d connections open, above "
                    "autosize.min=%d; create the pool with a smaller minimum size so that "
                    "a smaller limit also releases connections",
                    name,
                    keep,
                    lower,
                )
            self._keep_maintained(observer)
        gate = self.gates[name] = Gate(
            observer,
            limiter=limiter,
            timeout=timeout,
            open_connections=open_connections,
            keep=keep,
        )
        return gate

    def limit_of(self, name: str) -> int | None:
        """The limit in force for pool ``name``, if autosize manages it."""
        sizer = self.sizers.get(name)
        return None if sizer is None else sizer.limiter.limit

    def forget(self, name: str) -> None:
        """Drop pool ``name``'s gate and sizer (its instrumentation was removed), and the
        gauges that speak of a controller now gone (left, they would look stalled)."""
        self.gates.pop(name, None)
        if self.sizers.pop(name, None) is not None:
            self._report.retired(name)

    def observe(self, observer: PoolObserver) -> None:
        """Set up a new pool's observer: checkout tracking for leak detection."""
        if self._settings.leak_threshold is None:
            return
        observer.holders = Holders()
        finder = self._finder
        observer.call_site = lambda: finder.find(_SITE_SKIP) or UNKNOWN_SITE
        self._keep_maintained(observer)

    def _keep_maintained(self, observer: PoolObserver) -> None:
        """Run the maintenance thread now, and again from the pool's next acquire after
        it stopped (an app's lifespan shutdown, a fork)."""
        observer.on_acquire = self.maintenance.ensure_started
        self.maintenance.ensure_started()


class _MetricsReport:
    """A :class:`~poolwatch.sizing.SizingReport` in metrics."""

    def __init__(self, metrics: Metrics) -> None:
        self._metrics = metrics

    def started(self, sizer: PoolSizer) -> None:
        """A new sizer: its series exist from the start, so alerts have them."""
        metrics, pool = self._metrics, sizer.name
        metrics.pool_limit_target.labels(pool).set(sizer.limiter.limit)
        metrics.pool_limit_max.labels(pool).set(sizer.effective_max())
        metrics.autosize_decided.labels(pool).set(time.time())
        metrics.autosize_orphaned_permits.labels(pool).set(0)
        if sizer.read_limits is not None:
            metrics.autosize_budget_read.labels(pool).set(time.time())
            metrics.autosize_budget_errors.labels(pool)

    def retired(self, pool: str) -> None:
        """The sizer is gone: its gauges go with it (its counters stay, as counters do)."""
        metrics = self._metrics
        for gauge in (
            metrics.pool_limit_target,
            metrics.pool_limit_max,
            metrics.autosize_decided,
            metrics.autosize_budget_read,
            metrics.autosize_orphaned_permits,
        ):
            with contextlib.suppress(KeyError):  # never set for this pool
                gauge.remove(pool)

    def resized(self, pool: str, old: int, new: int) -> None:
        direction = "up" if new > old else "down"
        self._metrics.pool_resizes.labels(pool, direction).inc()
        self._metrics.pool_limit_target.labels(pool).set(new)

    def ceiling(self, pool: str, ceiling: int) -> None:
        self._metrics.pool_limit_max.labels(pool).set(ceiling)

    def decided(self, pool: str) -> None:
        self._metrics.autosize_decided.labels(pool).set(time.time())

    def budget_read(self, pool: str) -> None:
        self._metrics.autosize_budget_read.labels(pool).set(time.time())

    def budget_failed(self, pool: str) -> None:
        self._metrics.autosize_budget_errors.labels(pool).inc()

    def orphaned(self, pool: str, permits: int) -> None:
        self._metrics.autosize_orphaned_permits.labels(pool).set(permits)
