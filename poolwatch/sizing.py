"""How many connections a pool should allow right now: a feedback controller. Pure.

:class:`SizeController` is fed one :class:`Window` of observations per interval and
returns a :class:`Decision`; it has no clock, lock, sleep or I/O, so it is tested by
feeding it windows (:mod:`poolwatch.autosize` does the sampling and applying).

Why this design
---------------
The hard case is telling a database that *computes* from one that *waits*. Both show
requests queueing for connections under load; only the second gets faster with more
connections. The known limiters, read for this:

* **AIMD** (concurrency-limits): grows until something drops, then halves. Against a
  CPU-bound database nothing drops until far too late, so it settles at the ceiling,
  which is the failure this controller exists to avoid.
* **Gradient2** (concurrency-limits): ``limit * long_rtt / short_rtt + queue``, with the
  long-term RTT an average that follows the short one. Under sustained saturation the
  long average rises to the saturated RTT, the gradient returns to 1 and the limit
  drifts up again.
* **Envoy's adaptive concurrency**: measures the no-load RTT by periodically forcing the
  limit down to a few requests. Correct, but every probe throttles the application.
* **Vegas** (concurrency-limits): estimates how many requests queue *inside* the
  resource as ``limit * (1 - rtt_noload / rtt)``; grows while that is small, shrinks
  when it is large. The question is exactly ours; its weak spot is the no-load RTT,
  which a change in the query mix (slow reports replacing fast lookups) moves.

So: Vegas's idea, with the no-load time kept **per statement** (the execution time of
each SQL text in the quietest windows seen, forgotten slowly). A window's *inflation*
is how much slower each statement ran than its own no-load time (the median over
statements, weighted by count). A new query mix then changes nothing, while a database
running more statements than it has cores shows inflation that grows with the limit.

* **grow** when there is demand (requests waiting or timing out while the permits are
  in use) and inflation is low: while statements run at their no-load speed,
  multiplicatively (by up to half the limit or by the number waiting, whichever is
  smaller), so an I/O-bound database reaches a high limit in a few intervals; once they
  start to slow down, one connection at a time;
* **hold** in the dead band between the two inflation thresholds: the database's knee;
* **shrink** when inflation is high, towards the limit that would bring it back to the
  target (``in use * target / inflation``), by at most half per step, then stay put
  for a few intervals (cooldown) so the windows that follow measure the new limit;
* **shrink slowly** when connections sit idle for several intervals;
* **back off** by 30% when the database refuses connections ("too many clients"), and
  never exceed the ceiling the database budget allows.

Never below ``lower``, never above ``upper``.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence

__all__ = ["Decision", "SizeController", "Tuning", "Window"]


@dataclasses.dataclass(frozen=True, slots=True)
class Window:
    """What one pool did during one interval.

    Attributes:
        limit: the limit in force during the window.
        in_use_mean, in_use_max: connections checked out (time-averaged, and the peak).
        pending_mean, pending_max: acquires waiting for a permit or a connection.
        acquires: acquires that succeeded.
        timeouts: acquires that gave up waiting.
        refused: connection attempts the database refused ("too many clients").
        statements: ``(statement key, execution seconds)`` of the statements that ran
            (a sample of them on a busy pool); the key tells statements apart, e.g. a
            hash of the SQL text.
        ceiling: the most connections the database budget allows this pool now
            (``None``: no budget known).
    """

    limit: int
    in_use_mean: float = 0.0
    in_use_max: int = 0
    pending_mean: float = 0.0
    pending_max: int = 0
    acquires: int = 0
    timeouts: int = 0
    refused: int = 0
    statements: Sequence[tuple[int, float]] = ()
    ceiling: int | None = None


@dataclasses.dataclass(frozen=True, slots=True)
class Decision:
    """The limit to apply, why, and the inflation the controller saw (for logs)."""

    limit: int
    reason: str
    inflation: float | None = None

    def changed(self, old: int) -> bool:
        """Whether this decision moves the limit away from ``old``."""
        return self.limit != old


@dataclasses.dataclass(frozen=True, slots=True)
class Tuning:
    """The controller's constants; the defaults are what the benchmarks were run with.

    Attributes:
        grow_below: inflation under which the limit may grow (one at a time).
        grow_fast_below: inflation under which it grows by up to half at once.
        shrink_above: inflation over which the limit shrinks.
        target: the inflation a shrink aims for (inside the dead band).
        forget: how fast a statement's no-load time is forgotten, per window (it rises
            by this fraction, then takes the window's time if lower).
        min_statements: statements a window needs before its inflation is trusted.
        cooldown: windows after a shrink during which the limit does not grow.
        idle_windows: consecutive idle windows before an idle shrink.
        refused_backoff: the factor applied when the database refuses connections.
        max_keys: distinct statements remembered (the least used are dropped).
    """

    grow_below: float = 1.25
    grow_fast_below: float = 1.1
    shrink_above: float = 1.6
    target: float = 1.3
    forget: float = 0.002
    min_statements: int = 8
    cooldown: int = 3
    idle_windows: int = 3
    refused_backoff: float = 0.7
    max_keys: int = 2048


class SizeController:
    """Decides one pool's limit, window after window."""

    def __init__(self, lower: int, upper: int, tuning: Tuning | None = None) -> None:
        if not 1 <= lower <= upper:
            raise ValueError(f"need 1 <= lower <= upper, got lower={lower}, upper={upper}")
        self.lower = lower
        self.upper = upper
        self.tuning = tuning or Tuning()
        # statement key -> its no-load execution time (the per-window median, lowest seen)
        self._baseline: dict[int, float] = {}
        self._cooldown = 0
        self._idle = 0

    def decide(self, window: Window) -> Decision:
        """The limit for the next interval."""
        tuning = self.tuning
        limit = window.limit
        inflation = self._inflation(window.statements)
        ceiling = self.upper if window.ceiling is None else max(self.lower, window.ceiling)
        ceiling = min(ceiling, self.upper)
        if self._cooldown > 0:
            self._cooldown -= 1

        if window.refused > 0:
            self._start_cooldown()
            return self._to(
                limit * tuning.refused_backoff, "database refused connections", inflation
            )
        if limit > ceiling:
            return self._to(ceiling, "over the database budget", inflation)

        busy = window.in_use_mean >= 0.75 * limit or window.in_use_max >= limit
        demand = busy and (window.pending_mean >= 0.5 or window.timeouts > 0)
        if inflation is not None and inflation > tuning.shrink_above and busy:
            self._idle = 0
            self._start_cooldown()
            wanted = max(window.in_use_mean, 1.0) * tuning.target / inflation
            return self._to(max(wanted, limit / 2), "database saturated", inflation)
        if demand:
            self._idle = 0
            if self._cooldown > 0:
                return Decision(limit, "cooling down", inflation)
            if inflation is None:
                return self._to(limit + 1, "requests waiting", inflation, ceiling)
            if inflation < tuning.grow_below:
                step = 1  # near the knee: one connection at a time
                if inflation < tuning.grow_fast_below:
                    step = max(1, min(math.ceil(limit / 2), math.ceil(window.pending_mean)))
                return self._to(limit + step, "requests waiting", inflation, ceiling)
            return Decision(limit, "at the database's knee", inflation)
        if window.pending_max == 0 and window.in_use_max < limit:
            self._idle += 1
            if self._idle >= tuning.idle_windows:
                self._idle = 0
                gap = limit - max(window.in_use_max, 1)
                return self._to(limit - max(1, gap // 2), "connections idle", inflation)
            return Decision(limit, "idle", inflation)
        self._idle = 0
        return Decision(limit, "steady", inflation)

    # -- internals -------------------------------------------------------------------

    def _start_cooldown(self) -> None:
        self._cooldown = self.tuning.cooldown

    def _to(
        self, wanted: float, reason: str, inflation: float | None, ceiling: int | None = None
    ) -> Decision:
        top = self.upper if ceiling is None else min(ceiling, self.upper)
        limit = max(self.lower, min(top, math.floor(wanted)))
        return Decision(limit, reason, inflation)

    def _inflation(self, statements: Sequence[tuple[int, float]]) -> float | None:
        """Median slowdown of this window's statements against their no-load times."""
        by_key: dict[int, list[float]] = {}
        for key, seconds in statements:
            by_key.setdefault(key, []).append(seconds)
        baseline = self._baseline
        forget = 1.0 + self.tuning.forget
        for key in baseline:
            baseline[key] *= forget
        ratios: list[tuple[float, int]] = []
        total = 0
        for key, times in by_key.items():
            median = _median(times)
            known = baseline.get(key)
            if known is None or median < known:
                if known is None and len(baseline) >= self.tuning.max_keys:
                    self._forget_one()
                baseline[key] = median
                known = median
            if known > 0.0:
                ratios.append((median / known, len(times)))
                total += len(times)
        if total < self.tuning.min_statements:
            return None
        ratios.sort()
        half, seen = total / 2, 0
        for ratio, weight in ratios:
            seen += weight
            if seen >= half:
                return ratio
        return ratios[-1][0]

    def _forget_one(self) -> None:
        # Dicts keep insertion order: drop the statement first seen longest ago.
        del self._baseline[next(iter(self._baseline))]


def _median(values: list[float]) -> float:
    values.sort()
    middle = len(values) // 2
    if len(values) % 2:
        return values[middle]
    return (values[middle - 1] + values[middle]) / 2
