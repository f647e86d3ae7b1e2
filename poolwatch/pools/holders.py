"""Who holds a pool's connections: route, call site and since when, per checkout.

Kept only when something needs it (an acquire timeout, leak detection or autosize):
naming the routes that hold connections longest is what makes a
:class:`~poolwatch.errors.PoolTimeoutError` actionable, and a checkout held past the
leak threshold is reported once, with the line that took it (HikariCP's leak detection).
"""

from __future__ import annotations

import dataclasses
import threading

__all__ = ["Checkout", "Holders"]


@dataclasses.dataclass(slots=True)
class Checkout:
    """One connection out of the pool."""

    route: str
    call_site: str
    since: float  # perf_counter() at checkout
    leaked: bool = False  # already reported as a leak


class Holders:
    """The open checkouts of one pool, by holder id (what the adapter reports)."""

    def __init__(self) -> None:
        self._open: dict[int, Checkout] = {}
        # Sync pools check out from many threads; the scans below copy under it.
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._open)

    def taken(self, holder: int, route: str, call_site: str, now: float) -> None:
        """A connection went out."""
        self._open[holder] = Checkout(route, call_site, now)

    def returned(self, holder: int) -> Checkout | None:
        """A connection came back; its checkout, if it was known."""
        with self._lock:
            return self._open.pop(holder, None)

    def longest(self, now: float, count: int = 3) -> list[tuple[str, str, float]]:
        """``(route, call site, seconds held)`` of the ``count`` oldest checkouts."""
        with self._lock:
            checkouts = list(self._open.values())
        checkouts.sort(key=lambda c: c.since)
        return [(c.route, c.call_site, now - c.since) for c in checkouts[:count]]

    def new_leaks(self, now: float, threshold: float) -> list[Checkout]:
        """Checkouts held longer than ``threshold`` seconds, each returned only once."""
        with self._lock:
            checkouts = list(self._open.values())
        found = []
        for checkout in checkouts:
            if not checkout.leaked and now - checkout.since >= threshold:
                checkout.leaked = True
                found.append(checkout)
        return found
