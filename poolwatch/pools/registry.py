"""The pools of one PoolWatch, by name: their observers, and the probes that read their
drivers at scrape time.

:meth:`PoolRegistry.sources` is what a scrape reads (one :class:`~.reading.PoolSource`
per pool) and what the leak scan compares with the drivers (:meth:`PoolRegistry.drifts`).
Under autosize a pool's max is the limit in force, not the driver's ceiling: the registry
is told how to read that limit, never what autosize is.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

from poolwatch.events import PoolProbe, PoolState
from poolwatch.pools.observer import PoolObserver
from poolwatch.pools.reading import PoolSource, read_pool

__all__ = ["PoolRegistry"]


def _no_state() -> PoolState | None:
    return None


class PoolRegistry:
    """Observers and probes by pool name; ``limit_of(name)`` is the limit autosize keeps
    for the pool, or ``None``."""

    def __init__(self, limit_of: Callable[[str], int | None]) -> None:
        self.observers: dict[str, PoolObserver] = {}
        self.probes: dict[str, PoolProbe] = {}
        self._limit_of = limit_of

    def source(self, name: str) -> PoolSource:
        """Pool ``name`` as a scrape reads it."""
        observer = self.observers[name]
        probe = self.probes.get(name, _no_state)
        if self._limit_of(name) is not None:
            probe = self._limited(name, probe)
        return PoolSource(
            name, probe, observer.pending, observer.checked_out, lambda: observer.returning
        )

    def sources(self) -> Iterator[PoolSource]:
        """Every pool, as a scrape reads it."""
        for name in list(self.observers):
            yield self.source(name)

    def drifts(self) -> list[tuple[str, int]]:
        """``(pool, drift)`` of every pool, read from the drivers now."""
        readings = ((source.name, read_pool(source)) for source in self.sources())
        return [(name, reading.drift) for name, reading in readings if reading is not None]

    def _limited(self, name: str, probe: PoolProbe) -> PoolProbe:
        def read() -> PoolState | None:
            state = probe()
            limit = self._limit_of(name)
            if limit is None:
                return state
            if state is None:
                return PoolState(used=None, idle=None, max=limit)
            return PoolState(used=state.used, idle=state.idle, max=limit)

        return read
