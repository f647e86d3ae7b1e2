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

So: Vegas's idea, with the no-load time kept **per statement**: a low quantile of the
per-window median execution times of each SQL text over its last ``history`` windows.
A window's *inflation* is how much slower each statement ran than its own no-load time
(the median over statements, weighted by count). A new query mix then changes nothing,
while a database running more statements than it has cores shows inflation that grows
with the limit.

* **grow** when there is demand (requests waiting or timing out while the permits are
  in use) and inflation is low: while statements run at their no-load speed,
  multiplicatively (up to fourfold, and by no more than the number waiting), so an
  I/O-bound database reaches a high limit in a few intervals, but never fast past the
  knee seen at the last saturation (the limit where the slowdown crossed the threshold,
  until ``knee_doubt`` windows in a row just below it ran at no-load speed: the load has
  changed); once
  statements start to slow down, one connection at a time;
* **hold** in the dead band between the two inflation thresholds: the database's knee;
* **shrink** when inflation is high, towards the limit that would bring it back to the
  target (``in use * target / inflation``), by at most half per step unless the slowdown
  is severe (twice the threshold), then stay put
  for a few intervals (cooldown) so the windows that follow measure the new limit;
* **shrink slowly** when connections sit idle for several intervals;
* **back off** by 30% when the database refuses connections ("too many clients"), and
  never exceed the ceiling the database budget allows.

Never below ``lower``, never above ``upper``.
"""

from __future__ import annotations

import dataclasses
import math
from collections import deque
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
        grow_fast_below: inflation under which it may grow by ``fast_factor`` at once.
        fast_factor: how much the limit may multiply in one fast step.
        shrink_above: inflation over which the limit shrinks.
        target: the inflation a shrink aims for (inside the dead band).
        history: windows of each statement's median time remembered.
        baseline_quantile: which quantile of them is its no-load time.
        min_statements: statements a window needs before its inflation is trusted.
        cooldown: windows after a shrink during which the limit does not grow.
        idle_windows: consecutive idle windows before an idle shrink.
        refused_backoff: the factor applied when the database refuses connections.
        max_keys: distinct statements remembered (the oldest are dropped).
        knee_doubt: windows in a row at no-load speed just below the limit that last
            saturated the database before fast growth may pass it again.
    """

    grow_below: float = 1.25
    grow_fast_below: float = 1.1
    fast_factor: int = 4
    shrink_above: float = 1.6
    target: float = 1.3
    history: int = 120
    baseline_quantile: float = 0.2
    min_statements: int = 8
    cooldown: int = 3
    idle_windows: int = 3
    refused_backoff: float = 0.7
    max_keys: int = 2048
    knee_doubt: int = 4


class SizeController:
    """Decides one pool's limit, window after window."""

    def __init__(self, lower: int, upper: int, tuning: Tuning | None = None) -> None:
        if not 1 <= lower <= upper:
            raise ValueError(f"need 1 <= lower <= upper, got lower={lower}, upper={upper}")
        self.lower = lower
        self.upper = upper
        self.tuning = tuning or Tuning()
        # statement key -> its recent per-window median execution times
        self._history: dict[int, deque[float]] = {}
        self._cooldown = 0
        self._idle = 0
        # The last limit at which the database saturated, and how many windows in a row
        # just below it ran at no-load speed (evidence the load has changed).
        self._knee: int | None = None
        self._doubt = 0

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
            # Where the slowdown would cross the threshold, if it grows with the limit.
            self._knee = max(2, math.ceil(limit * tuning.shrink_above / inflation))
            self._doubt = 0
            wanted = max(window.in_use_mean, 1.0) * tuning.target / inflation
            # By half at most per step, unless the slowdown is severe: then the estimate
            # is clear enough to jump to (a pool grown for a waiting load meets a
            # computing one).
            if inflation < 2 * tuning.shrink_above:
                wanted = max(wanted, limit / 2)
            return self._to(wanted, "database saturated", inflation)
        if demand:
            self._idle = 0
            return self._grow(window, inflation, ceiling)
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

    def _grow(self, window: Window, inflation: float | None, ceiling: int) -> Decision:
        """Requests are waiting: grow, as fast as the database allows."""
        tuning, limit = self.tuning, window.limit
        if self._cooldown > 0:
            return Decision(limit, "cooling down", inflation)
        if inflation is None:
            return self._to(limit + 1, "requests waiting", inflation, ceiling)
        if inflation >= tuning.grow_below:
            return Decision(limit, "at the database's knee", inflation)
        wanted = limit + 1  # near the knee: one connection at a time
        if inflation < tuning.grow_fast_below:
            if self._knee is not None and limit >= self._knee - 1:
                # Unslowed right below the knee, again and again: another load now.
                self._doubt += 1
                if self._doubt >= tuning.knee_doubt:
                    self._knee, self._doubt = None, 0
            step = min(limit * (tuning.fast_factor - 1), math.ceil(window.pending_mean))
            wanted = limit + max(1, step)
            if self._knee is not None:  # fast, but not back into the last knee
                wanted = max(limit + 1, min(wanted, self._knee - 1))
        return self._to(wanted, "requests waiting", inflation, ceiling)

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
        ratios: list[tuple[float, int]] = []
        total = 0
        for key, times in by_key.items():
            median = _median(times)
            baseline = self._baseline_of(key, median, len(times))
            if baseline > 0.0:
                ratios.append((median / baseline, len(times)))
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

    def _baseline_of(self, key: int, median: float, count: int) -> float:
        """A statement's no-load time: a low quantile of its recent window medians.

        A quantile rather than the minimum: the minimum of noisy medians is one lucky
        window, and every window after it would look inflated.
        """
        tuning = self.tuning
        history = self._history.get(key)
        if history is None:
            if len(self._history) >= tuning.max_keys:
                # Dicts keep insertion order: drop the statement first seen longest ago.
                del self._history[next(iter(self._history))]
            history = self._history[key] = deque(maxlen=tuning.history)
        if count >= 3 or not history:  # one or two statements make a noisy median
            history.append(median)
        ordered = sorted(history)
        return ordered[int(tuning.baseline_quantile * (len(ordered) - 1))]


def _median(values: list[float]) -> float:
    values.sort()
    middle = len(values) // 2
    if len(values) % 2:
        return values[middle]
    return (values[middle - 1] + values[middle]) / 2
