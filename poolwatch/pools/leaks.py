"""Connections held too long: each checkout past the leak threshold, once, with the line
that took it (HikariCP's leak detection), and connections the driver has had out all
along the threshold that no checkout poolwatch saw accounts for.

:class:`LeakScan` is run every second by :class:`~poolwatch.sizing.maintenance.Maintenance`.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable

from poolwatch.pools.observer import PoolObserver
from poolwatch.pools.reconcile import Unaccounted
from poolwatch.safety import FaultReporter

__all__ = ["UNKNOWN_ROUTE", "LeakScan"]

leak_logger = logging.getLogger("poolwatch.leaks")

UNKNOWN_ROUTE = "unknown"  # the route of a leaked connection nobody was seen taking


class LeakScan:
    """Reports each pool's leaks to ``count_leak(pool, route)`` and the log."""

    def __init__(
        self, threshold: float, count_leak: Callable[[str, str], None], faults: FaultReporter
    ) -> None:
        self.threshold = threshold
        self._count_leak = count_leak
        self._faults = faults
        self._unaccounted: dict[str, Unaccounted] = {}

    def scan(
        self, now: float, observers: Iterable[PoolObserver], drifts: Iterable[tuple[str, int]]
    ) -> None:
        """One look at every pool's checkouts, and at what the drivers have out."""
        threshold = self.threshold
        for observer in observers:
            holders = observer.holders
            if holders is None:
                continue
            try:
                for checkout in holders.new_leaks(now, threshold):
                    self._count_leak(observer.name, checkout.route)
                    leak_logger.warning(
                        "pool %s: a connection taken at %s (route %s) has been held for "
                        "%.1f s, past the leak threshold of %.1f s",
                        observer.name,
                        checkout.call_site or "an unknown line",
                        checkout.route,
                        now - checkout.since,
                        threshold,
                        extra={
                            "poolwatch_leak": {
                                "pool": observer.name,
                                "route": checkout.route,
                                "call_site": checkout.call_site,
                                "held_seconds": now - checkout.since,
                            }
                        },
                    )
            except Exception as exc:
                self._faults.report("leaks", exc)
        try:
            self._scan_unaccounted(now, threshold, drifts)
        except Exception as exc:
            self._faults.report("leaks", exc)

    def _scan_unaccounted(
        self, now: float, threshold: float, drifts: Iterable[tuple[str, int]]
    ) -> None:
        """Connections the driver has had out all along the threshold, that no checkout
        poolwatch saw accounts for: taken around the ORM, or lost by an entry poolwatch
        could not undo. There is no line to name, only the count."""
        for name, off in drifts:
            tracker = self._unaccounted.get(name)
            if tracker is None:
                tracker = self._unaccounted[name] = Unaccounted()
            new = tracker.sample(now, off, threshold)
            for _ in range(new):
                self._count_leak(name, UNKNOWN_ROUTE)
            if new:
                leak_logger.warning(
                    "pool %s: %d connection(s) have been in use in the driver's pool for "
                    "over %.1f s with no checkout poolwatch saw (taken around the ORM, or "
                    "lost); %d such in all",
                    name,
                    new,
                    threshold,
                    tracker.reported,
                    extra={
                        "poolwatch_leak": {
                            "pool": name,
                            "route": UNKNOWN_ROUTE,
                            "call_site": None,
                            "unaccounted": tracker.reported,
                        }
                    },
                )
