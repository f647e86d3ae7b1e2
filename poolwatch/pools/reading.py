"""One pool's numbers, read at once: what its driver says, what poolwatch counts, and
how far apart they are (:func:`~poolwatch.pools.reconcile.drift`).

A scrape reads every pool through :func:`read_pool` (:mod:`poolwatch.exposition.collectors`,
and the shared files of :mod:`poolwatch.exposition.multiprocess`), and so does the leak
scan, for the connections no checkout accounts for.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

from poolwatch.events import PoolState
from poolwatch.pools.reconcile import drift

__all__ = ["PoolReading", "PoolSource", "read_pool"]


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


class PoolReading(NamedTuple):
    """One pool's gauges, as exposed."""

    used: int
    idle: int
    max: int | None
    pending: int
    drift: int = 0


def read_pool(source: PoolSource) -> PoolReading | None:
    """Read a pool: the driver's own counts where it has them, poolwatch's otherwise, and
    how far poolwatch's own count of checkouts is from the driver's (see
    :mod:`~poolwatch.pools.reconcile`).

    ``None`` when there is no pool to read: the probe says the pool does not exist (not
    opened yet, closed, its engine disposed or gone) and nothing is out or waiting. Its
    gauges are then left out of the scrape rather than shown at zero, so that pools an
    app makes and closes (one per test) do not pile up series.
    """
    state = source.probe()
    waiting = source.pending()
    own = source.checked_out()
    if state is None and not own and not waiting:
        return None
    if state is None or state.used is None:  # nothing to compare with
        idle = 0 if state is None or state.idle is None else state.idle
        return PoolReading(own, idle, None if state is None else state.max, waiting)
    idle = 0 if state.idle is None else state.idle
    off = drift(state.used, own, waiting, source.returning())
    return PoolReading(state.used, idle, state.max, waiting, off)
