"""Per-PoolWatch wiring of gates, sizers and the maintenance task.

An adapter asks :meth:`Guards.gate_for` once per pool, when it first sees the pool's
driver. The answer is ``None`` unless something must stand in front of that pool's
acquire: autosize (a limiter), an acquire timeout, leak detection (checkout tracking).
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from poolwatch.autosize import Autosize, Gate, Maintenance, PoolSizer, ReadLimits
from poolwatch.callsite import CallSiteFinder
from poolwatch.config import Settings
from poolwatch.holders import Holders
from poolwatch.limiter import AsyncLimiter, ThreadLimiter
from poolwatch.metrics import Metrics
from poolwatch.observer import PoolObserver
from poolwatch.recorder import UNKNOWN_SITE
from poolwatch.safety import FaultReporter

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
        :mod:`poolwatch.appname`), if they carry one.
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
            lower, upper = autosize.bounds(pool_max)
            start = autosize.initial or lower
            # A sync pool is used from threads; anything else waits on an event loop.
            limiter = ThreadLimiter(start) if threads else AsyncLimiter(start)
            self.sizers[name] = PoolSizer(
                observer,
                limiter,
                autosize,
                (lower, upper),
                on_resize=self._resized,
                on_ceiling=self._ceiling,
                open_connections=open_connections,
                read_limits=read_limits if autosize.budget is None else None,
                tag=tag,
            )
            self._metrics.pool_limit_target.labels(name).set(limiter.limit)
            self._metrics.pool_limit_max.labels(name).set(self.sizers[name].effective_max())
            if keep > lower:
                logger.warning(
                    "pool %s: the driver keeps at least %d connections open, above "
                    "autosize.min=%d; create the pool with a smaller minimum size so that "
                    "a smaller limit also releases connections",
                    name,
                    keep,
                    lower,
                )
            self.maintenance.ensure_started()
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
        """Drop pool ``name``'s gate and sizer (its instrumentation was removed)."""
        self.gates.pop(name, None)
        self.sizers.pop(name, None)

    def observe(self, observer: PoolObserver) -> None:
        """Set up a new pool's observer: checkout tracking for leak detection."""
        if self._settings.leak_threshold is None:
            return
        observer.holders = Holders()
        finder = self._finder
        observer.call_site = lambda: finder.find(_SITE_SKIP) or UNKNOWN_SITE
        self.maintenance.ensure_started()

    def _resized(self, pool: str, old: int, new: int) -> None:
        direction = "up" if new > old else "down"
        self._metrics.pool_resizes.labels(pool, direction).inc()
        self._metrics.pool_limit_target.labels(pool).set(new)

    def _ceiling(self, pool: str, ceiling: int) -> None:
        self._metrics.pool_limit_max.labels(pool).set(ceiling)
