"""One pool's autosize: :class:`PoolSizer` samples it, asks the controller, applies the
limit and keeps it within the database's budget.

It turns what the pool did during an interval into a
:class:`~poolwatch.sizing.controller.Window`, asks the
:class:`~poolwatch.sizing.controller.SizeController`, applies the new limit and reports
it (``poolwatch_pool_resizes_total``, ``poolwatch_pool_limit_target``, one log line per
change) to a :class:`SizingReport`. The budget's verdicts come from
:mod:`poolwatch.sizing.budget`; the reads themselves from :mod:`.maintenance`.
"""

from __future__ import annotations

import logging
from collections import deque
from collections.abc import Awaitable, Callable
from time import perf_counter
from typing import Protocol

from poolwatch.pools.observer import PoolObserver
from poolwatch.sizing.budget import Budget, ServerLimits, budget_for
from poolwatch.sizing.controller import Decision, SizeController, Window
from poolwatch.sizing.limiter import Limiter
from poolwatch.sizing.settings import SAMPLE_EVERY, Autosize

__all__ = ["BUDGET_FRESH", "PoolSizer", "ReadLimits", "SizingReport"]

logger = logging.getLogger("poolwatch.autosize")

ReadLimits = Callable[[], Awaitable[ServerLimits]]

STATEMENT_SAMPLE = 512  # statements kept per pool between two decisions (the latest)
# Growth past the limit in force counts on slots a read found free; another instance may
# have taken them since (one that connected after the read, above all). So growth needs
# a read this recent: an older one is read again first (the early read above).
BUDGET_FRESH = 1.0
# Samples (of SAMPLE_EVERY) in a row a permit must be out with no checkout behind it to
# count as held by nobody: far longer than any acquire's or return's passage.
ORPHAN_SAMPLES = 50


class SizingReport(Protocol):
    """Where a sizer reports what it did, and whether it still works (metrics, logs)."""

    def resized(self, pool: str, old: int, new: int) -> None:
        """The limit moved from ``old`` to ``new``."""

    def ceiling(self, pool: str, ceiling: int) -> None:
        """The most the limit may be now (``max``, or the budget's ceiling)."""

    def decided(self, pool: str) -> None:
        """The controller made a decision (it is alive)."""

    def budget_read(self, pool: str) -> None:
        """The database's connection budget was read."""

    def budget_failed(self, pool: str) -> None:
        """A read of the database's connection budget failed."""

    def orphaned(self, pool: str, permits: int) -> None:
        """``permits`` permits have been out for a while with no checkout behind them."""


class PoolSizer:
    """Samples one pool, decides its limit every ``interval`` and applies it."""

    def __init__(
        self,
        observer: PoolObserver,
        limiter: Limiter,
        settings: Autosize,
        bounds: tuple[int, int],
        *,
        report: SizingReport,
        open_connections: Callable[[], int],
        read_limits: ReadLimits | None = None,
        tag: str | None = None,
    ) -> None:
        self.name = observer.name
        self.observer = observer
        self.limiter = limiter
        self.settings = settings
        self.lower, self.upper = bounds
        self.controller = SizeController(self.lower, self.upper, settings.tuning)
        self.read_limits = read_limits
        # The application_name tag of this pool's connections (None: not tagged).
        self.tag = tag
        self.budget: Budget | None = None  # the last read's verdict
        self.budget_read_at = 0.0  # perf_counter() when it was made (its start)
        # Until then, growth waits: other pools' reads made before this one's connections
        # were on the server may still be in use (see growth_ceiling).
        self.seen_by_peers_at: float | None = None
        # Connections this pool holds open, used or idle (from the driver's own counts).
        self.open_connections = open_connections
        # Until the database's budget is first read, the limit stays where it starts.
        self.ceiling: int | None = settings.budget
        if self.ceiling is None and read_limits is not None:
            self.ceiling = limiter.limit
        self.report = report
        observer.statements = deque(maxlen=STATEMENT_SAMPLE)
        # The latest samples of permits out with no checkout, pending acquire or return
        # behind them: a permit in every one of them is held by nobody.
        self._unheld: deque[int] = deque(maxlen=ORPHAN_SAMPLES)
        self.orphaned = 0
        self._samples = 0
        self._in_use_sum = 0
        self._in_use_max = 0
        self._pending_sum = 0
        self._pending_max = 0
        self._acquired = observer.acquired
        self._timed_out = observer.timed_out
        self._refused = observer.refused
        self._opened = observer.opened
        self.last: Decision | None = None
        self.budget_failures = 0

    def sample(self) -> None:
        """One look at the pool (every 100 ms)."""
        limiter, observer = self.limiter, self.observer
        in_use, pending = limiter.in_use, observer.pending()
        self._samples += 1
        self._in_use_sum += in_use
        self._in_use_max = max(self._in_use_max, in_use)
        self._pending_sum += pending
        self._pending_max = max(self._pending_max, pending)
        # Acquires past their permit (waiting on the driver) hold one without a checkout
        # yet; so do connections on their way back. Each sample may catch a permit in
        # such a passage; one that stays unexplained in every sample is held by nobody.
        passing = max(0, pending - limiter.waiting) + observer.returning
        self._unheld.append(max(0, in_use - observer.checked_out() - passing))
        orphaned = min(self._unheld) if len(self._unheld) == ORPHAN_SAMPLES else 0
        if orphaned != self.orphaned:
            if orphaned > self.orphaned:
                logger.error(
                    "pool %s: %d autosize permit(s) have been out for %.0f s with no "
                    "checkout behind them; the pool can use %d fewer connections than its "
                    "limit of %d",
                    self.name,
                    orphaned,
                    ORPHAN_SAMPLES * SAMPLE_EVERY,
                    orphaned,
                    limiter.limit,
                )
            self.orphaned = orphaned
            self.report.orphaned(self.name, orphaned)

    def window(self) -> Window:
        """What happened since the last decision; starts the next window."""
        observer = self.observer
        samples = max(1, self._samples)
        statements = list(observer.statements or ())
        if observer.statements is not None:
            observer.statements.clear()
        window = Window(
            limit=self.limiter.limit,
            in_use_mean=self._in_use_sum / samples,
            in_use_max=self._in_use_max,
            pending_mean=self._pending_sum / samples,
            pending_max=self._pending_max,
            acquires=observer.acquired - self._acquired,
            timeouts=observer.timed_out - self._timed_out,
            refused=observer.refused - self._refused,
            statements=statements,
            ceiling=self.growth_ceiling(),
            opened=observer.opened - self._opened,
        )
        self._samples = self._in_use_sum = self._in_use_max = 0
        self._pending_sum = self._pending_max = 0
        self._acquired, self._timed_out = observer.acquired, observer.timed_out
        self._refused, self._opened = observer.refused, observer.opened
        return window

    def decide(self) -> Decision:
        """Ask the controller about the last window and apply what it says."""
        window = self.window()
        decision = self.controller.decide(window)
        self.last = decision
        report = self.report
        report.decided(self.name)
        report.ceiling(self.name, self.effective_max())
        old = self.limiter.limit
        if decision.changed(old):
            self.limiter.set_limit(decision.limit)
            report.resized(self.name, old, decision.limit)
            inflation = "n/a" if decision.inflation is None else f"{decision.inflation:.2f}"
            logger.info(
                "pool %s: limit %d -> %d (%s; in use %.1f, waiting %.1f, inflation %s)",
                self.name,
                old,
                decision.limit,
                decision.reason,
                window.in_use_mean,
                window.pending_mean,
                inflation,
                extra={
                    "poolwatch_resize": {
                        "pool": self.name,
                        "old": old,
                        "new": decision.limit,
                        "reason": decision.reason,
                        "in_use": window.in_use_mean,
                        "waiting": window.pending_mean,
                        "inflation": decision.inflation,
                    }
                },
            )
        return decision

    def budget_blocked(self) -> bool:
        """Whether requests wait with the limit held by the budget (its ceiling, or a
        read too old to grow on), below ``upper``."""
        ceiling = self.growth_ceiling()
        return (
            ceiling is not None
            and ceiling < self.upper
            and self.limiter.limit >= ceiling
            and self.observer.pending() > 0
        )

    def growth_ceiling(self) -> int | None:
        """The budget's ceiling as the controller may use it now: past the limit in
        force only on a read younger than ``BUDGET_FRESH``, and, for a pool sharing the
        database with tagged peers, not before every peer's read from before this pool
        appeared is that old.

        Each pool counts the others at what they hold or their fair share, whichever is
        more (:func:`~poolwatch.sizing.budget.peer_ceiling`): that holds while every pool grows
        only on reads that saw the others. A pool that read while alone may take the
        whole room until its read is ``BUDGET_FRESH`` old; a newcomer that grew at once
        on its own first read would count on slots that pool is still growing into.
        """
        ceiling = self.ceiling
        if ceiling is None or self.budget is None:  # none, or set by hand: never stale
            return ceiling
        now = perf_counter()
        held = min(ceiling, max(self.limiter.limit, self.lower))
        if now - self.budget_read_at > BUDGET_FRESH:
            return held
        if self.seen_by_peers_at is not None and now < self.seen_by_peers_at + BUDGET_FRESH:
            return held
        return ceiling

    def effective_max(self) -> int:
        """The most the limit may be now: ``upper``, or the budget's ceiling if lower."""
        if self.ceiling is None:
            return self.upper
        return max(self.lower, min(self.upper, self.ceiling))

    def apply_budget(
        self, limits: ServerLimits, held: int | None = None, read_at: float | None = None
    ) -> None:
        """Work out this pool's ceiling from the database's limits, read while the pool
        held ``held`` connections or more (counted before the read: a pool that grows
        meanwhile must not look as if the server missed its new connections), by a read
        that started at ``read_at`` (``perf_counter()``; now if not given)."""
        settings = self.settings
        budget = budget_for(
            limits,
            held=self.open_connections() if held is None else held,
            tag=self.tag,
            share=settings.budget_share,
            headroom=settings.budget_headroom,
        )
        self._log_budget(budget)
        self.budget = budget
        self.budget_read_at = perf_counter() if read_at is None else read_at
        if budget.peers is not None and self.seen_by_peers_at is None:
            # Its connections were on the server when the read started: a peer's read
            # from before then is stale BUDGET_FRESH after this read ends, at the latest.
            self.seen_by_peers_at = perf_counter()
        self.report.budget_read(self.name)
        ceiling = budget.ceiling
        if settings.budget is not None:
            ceiling = min(ceiling, settings.budget)
        self.ceiling = max(self.lower, ceiling)

    def _log_budget(self, budget: Budget) -> None:
        """One line when the way the budget is reached changes (and at the first read)."""
        last = self.budget
        if last is not None and last.peers == budget.peers:
            return
        if budget.peers is not None:
            logger.info(
                "pool %s: %d autosized pool(s) share the database; this one may hold %d "
                "connections (tag %s)",
                self.name,
                budget.peers,
                budget.ceiling,
                self.tag,
            )
        elif budget.unseen:
            logger.warning(
                "pool %s: the database's other clients cannot be told apart (%s: a pooler "
                "such as PgBouncer, a role that cannot see other sessions, or connections "
                "opened before poolwatch); the budget is the pool's own connections plus "
                "autosize.budget_share=%s of what is free. Set autosize.budget to bound it "
                "by hand.",
                self.name,
                budget.unseen,
                self.settings.budget_share,
            )
