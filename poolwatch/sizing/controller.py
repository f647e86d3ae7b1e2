"""How many connections a pool should allow right now: a feedback controller. Pure.

:class:`SizeController` is fed one :class:`Window` of observations per interval and
returns a :class:`Decision`; it has no clock, lock, sleep or I/O, so it is tested by
feeding it windows (:mod:`poolwatch.sizing.sizer` does the sampling and applying).

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
  multiplicatively (up to eightfold, and by no more than the number waiting), so an
  I/O-bound database reaches a high limit in a few intervals; once statements start to
  slow down, one connection at a time;
* **remember the knee**: when the database saturates, the limit at which the slowdown
  would cross the threshold, and which statements it was running. Growth stops just
  below it. The knee is tested again (one step onto it) after ``knee_doubt`` windows in
  a row of unslowed demand right below it, and each time the test finds it where it
  was, the next test waits ``knee_backoff`` times longer (up to ``knee_patience``
  windows): a computing database is not probed over and over; a step onto the knee
  that runs at no-load speed means the load has changed, and growth is free again. A window
  whose statements are mostly ones the database was not running when it saturated is
  another load, and the knee is forgotten at once;
* **hold** in the dead band between the two inflation thresholds: the database's knee;
* **shrink** when inflation is high two windows in a row (one window over the threshold
  may be noise), towards the limit that would bring it back to the target
  (``in use * target / inflation``), by at most half per step; a severe slowdown (twice
  the threshold) shrinks at once, straight to that estimate. Then stay put
  for a few intervals (cooldown) so the windows that follow measure the new limit;
* **not trust a slowdown while connections open**: a burst of new connections stalls the
  client for a moment (the driver's handshakes run on the same event loop) and every
  statement in flight looks slower; the window with the burst and the next one hold;
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
        opened: connections the pool opened during the window.
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
    opened: int = 0


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
        knee_doubt: windows in a row of unslowed demand (inflation under ``grow_below``)
            right below the knee before it is first tested again.
        knee_backoff: how much longer the next test waits when a test finds the knee
            where it was.
        knee_patience: the longest wait between two tests of the knee, in windows.
        same_load: the share of a window's statements the database was already running
            when it saturated, under which the window is another load.
        fresh_windows: windows during which a slowdown is not trusted after a burst of
            new connections (the one with the burst included).
    """

    grow_below: float = 1.4
    grow_fast_below: float = 1.1
    fast_factor: int = 8
    shrink_above: float = 2.0
    target: float = 1.5
    history: int = 120
    baseline_quantile: float = 0.2
    min_statements: int = 8
    cooldown: int = 3
    idle_windows: int = 3
    refused_backoff: float = 0.7
    max_keys: int = 2048
    knee_doubt: int = 4
    knee_backoff: int = 4
    knee_patience: int = 1200
    same_load: float = 0.5
    fresh_windows: int = 2


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
        # Where the database saturated last, with the statements it was running then;
        # windows in a row of unslowed demand right below it since, and how many of them
        # the next test of it waits for.
        self._knee: int | None = None
        self._knee_load: frozenset[int] = frozenset()
        self._doubt = 0
        self._patience = self.tuning.knee_doubt
        # The knee a step was just taken onto, until the next window answers.
        self._tested: int | None = None
        # Windows left during which a slowdown is blamed on new connections.
        self._fresh = 0
        # Whether the last window was over the shrink threshold.
        self._over = False

    def decide(self, window: Window) -> Decision:
        """The limit for the next interval."""
        tuning = self.tuning
        limit = window.limit
        inflation = self._inflation(window.statements, window.in_use_mean <= self.lower)
        ceiling = self.upper if window.ceiling is None else max(self.lower, window.ceiling)
        ceiling = min(ceiling, self.upper)
        if self._cooldown > 0:
            self._cooldown -= 1
        if window.opened >= max(2, limit // 4):
            self._fresh = tuning.fresh_windows
        fresh = self._fresh > 0
        if fresh:
            self._fresh -= 1
        self._forget_knee_of_another_load(window.statements)

        if window.refused > 0:
            self._start_cooldown()
            return self._to(
                limit * tuning.refused_backoff, "database refused connections", inflation
            )
        if limit > ceiling:
            return self._to(ceiling, "over the database budget", inflation)

        busy = window.in_use_mean >= 0.75 * limit or window.in_use_max >= limit
        demand = busy and (window.pending_mean >= 0.5 or window.timeouts > 0)
        slowdown = 0.0 if inflation is None or not busy else inflation
        over = slowdown > tuning.shrink_above
        # One window over the threshold may be noise; two in a row, or one severe, not.
        confirmed = over and (self._over or slowdown >= 2 * tuning.shrink_above)
        self._over = over
        if over:
            self._idle = 0
            if fresh:
                return Decision(limit, "connections opening", inflation)
            if not confirmed:
                return Decision(limit, "slower, to be confirmed", inflation)
            self._start_cooldown()
            self._saturated(limit, slowdown, window.statements)
            wanted = max(window.in_use_mean, 1.0) * tuning.target / slowdown
            # By half at most per step, unless the slowdown is severe: then the estimate
            # is clear enough to jump to (a pool grown for a waiting load meets a
            # computing one).
            if slowdown < 2 * tuning.shrink_above:
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
        fast = inflation < tuning.grow_fast_below
        if self._tested is not None:  # the window after a step onto the knee
            self._tested = None
            if not fast:  # the knee is about where it was: test it less often
                self._knee = limit + 1
                self._patience = min(self._patience * tuning.knee_backoff, tuning.knee_patience)
                self._doubt = 0
                return Decision(limit, "at the database's knee", inflation)
            self._forget_knee()  # no slower past it: the load has changed
        knee = self._knee
        if inflation >= tuning.grow_below:
            self._doubt = 0
            return Decision(limit, "at the database's knee", inflation)
        if knee is not None and limit >= knee - 1:
            # Right below the knee: held, until enough windows in a row ran unslowed.
            self._doubt += 1
            if self._doubt < self._patience:
                return Decision(limit, "below the knee", inflation)
            # Unslowed right below the knee for a while: one step onto it, to see.
            self._tested, self._doubt = knee, 0
            return self._to(limit + 1, "testing the knee", inflation, ceiling)
        wanted = limit + 1  # near the knee: one connection at a time
        if fast:
            step = min(limit * (tuning.fast_factor - 1), math.ceil(window.pending_mean))
            wanted = limit + max(1, step)
            if knee is not None:  # fast, but not back into the last knee
                wanted = max(limit + 1, min(wanted, knee - 1))
        return self._to(wanted, "requests waiting", inflation, ceiling)

    def _saturated(
        self, limit: int, inflation: float, statements: Sequence[tuple[int, float]]
    ) -> None:
        """Remember where the database saturated (and what it ran), and adjust how long
        the next test of that knee waits."""
        tuning = self.tuning
        # Where the slowdown would cross the threshold, if it grows with the limit.
        knee = max(2, math.ceil(limit * tuning.shrink_above / inflation))
        tested = self._tested
        if tested is not None and knee <= tested * 1.5 + 1:
            # The test found the knee where it was: test it less often.
            self._patience = min(self._patience * tuning.knee_backoff, tuning.knee_patience)
        elif self._knee is None:
            self._patience = tuning.knee_doubt
        self._tested = None
        self._knee, self._doubt = knee, 0
        self._knee_load = frozenset(key for key, _ in statements)

    def _forget_knee_of_another_load(self, statements: Sequence[tuple[int, float]]) -> None:
        """Mostly statements the database was not running when it saturated: the knee
        belongs to another load."""
        if self._knee is None or not statements:
            return
        known = self._knee_load
        same = sum(1 for key, _ in statements if key in known)
        if same < self.tuning.same_load * len(statements):
            self._forget_knee()

    def _forget_knee(self) -> None:
        self._knee = self._tested = None
        self._doubt = 0
        self._patience = self.tuning.knee_doubt

    def _start_cooldown(self) -> None:
        self._cooldown = self.tuning.cooldown

    def _to(
        self, wanted: float, reason: str, inflation: float | None, ceiling: int | None = None
    ) -> Decision:
        top = self.upper if ceiling is None else min(ceiling, self.upper)
        limit = max(self.lower, min(top, math.floor(wanted)))
        return Decision(limit, reason, inflation)

    def _inflation(
        self, statements: Sequence[tuple[int, float]], at_floor: bool = False
    ) -> float | None:
        """Median slowdown of this window's statements against their no-load times."""
        tuning = self.tuning
        by_key: dict[int, list[float]] = {}
        for key, seconds in statements:
            by_key.setdefault(key, []).append(seconds)
        medians = [(key, _median(times), len(times)) for key, times in by_key.items()]
        ratios: list[tuple[float, int]] = []
        total = 0
        for key, median, count in medians:
            baseline = self._baseline_of(key, median)
            if baseline > 0.0:
                ratios.append((median / baseline, count))
                total += count
        inflation = _weighted_median(ratios, total) if total >= tuning.min_statements else None
        # A slowed window teaches nothing about the no-load times: a pool held at the
        # knee would otherwise take the knee's speed for the no-load one and creep up.
        # At the floor a slowdown cannot be the pool's doing, so the times follow it (a
        # database slower for good is learnt there, after the shrinks it causes).
        slowed = not at_floor and inflation is not None and inflation >= tuning.grow_fast_below
        for key, median, count in medians:
            history = self._history[key]
            if not history or (not slowed and count >= 3):  # 1-2 statements: noisy median
                history.append(median)
        return inflation

    def _baseline_of(self, key: int, median: float) -> float:
        """A statement's no-load time: a low quantile of its recent window medians
        (this window's included).

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
        ordered = sorted([*history, median])
        return ordered[int(tuning.baseline_quantile * (len(ordered) - 1))]


def _weighted_median(ratios: list[tuple[float, int]], total: int) -> float:
    ratios.sort()
    half, seen = total / 2, 0
    for ratio, weight in ratios:
        seen += weight
        if seen >= half:
            return ratio
    return ratios[-1][0]


def _median(values: list[float]) -> float:
    values.sort()
    middle = len(values) // 2
    if len(values) % 2:
        return values[middle]
    return (values[middle - 1] + values[middle]) / 2
