"""Adaptive pool sizing and connection guarding: the mechanism around :mod:`sizing`.

* :class:`Autosize` is what a user passes (``instrument_tortoise(autosize=...)``).
* :class:`Gate` stands in front of one pool's acquire: the resizable limiter (with
  autosize), the acquire timeout that raises :class:`~poolwatch.PoolTimeoutError`, and
  the permit given back after release.
* :class:`PoolSizer` turns what the pool did during an interval into a
  :class:`~poolwatch.sizing.Window`, asks the controller, applies the new limit and
  reports it (``poolwatch_pool_resizes_total``, ``poolwatch_pool_limit_target``, one log
  line per change).
* :class:`Maintenance` is the one asyncio task of a :class:`~poolwatch.PoolWatch` that
  drives them: samples every 100 ms, decisions every ``interval``, database budget reads
  every ``budget_interval``, and the leak scan every second.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import dataclasses
import logging
import math
import threading
import time
from collections import deque
from collections.abc import Awaitable, Callable, Mapping
from time import perf_counter
from typing import Protocol, TypeVar

from poolwatch import context, forksafe
from poolwatch.budget import Budget, ServerLimits, budget_for
from poolwatch.deadline import WaitDeadline
from poolwatch.errors import ConfigError, PoolTimeoutError, PoolWatchError
from poolwatch.limiter import AsyncLimiter, Limiter, ThreadLimiter
from poolwatch.observer import PoolObserver
from poolwatch.reconcile import Unaccounted
from poolwatch.safety import FaultReporter
from poolwatch.sizing import Decision, SizeController, Tuning, Window

__all__ = ["Autosize", "Gate", "Maintenance", "PoolSizer", "SizingReport"]

logger = logging.getLogger("poolwatch.autosize")
leak_logger = logging.getLogger("poolwatch.leaks")

T = TypeVar("T")
ReadLimits = Callable[[], Awaitable[ServerLimits]]

SAMPLE_EVERY = 0.1  # seconds between two samples of in-use and waiting
LEAK_SCAN_EVERY = 1.0
STATEMENT_SAMPLE = 512  # statements kept per pool between two decisions (the latest)
BUDGET_TRIES = 3  # failed budget reads before growing without one
# While requests wait and the budget (not the pool's max) holds the limit, the budget is
# read again this soon instead of after budget_interval: growth waits for a fresh read,
# and a peer that left (or shrank) frees its share within a second, not minutes.
BUDGET_BLOCKED_EVERY = 0.5
# Growth past the limit in force counts on slots a read found free; another instance may
# have taken them since (one that connected after the read, above all). So growth needs
# a read this recent: an older one is read again first (the early read above).
BUDGET_FRESH = 1.0
TRIM_AFTER = 3.0  # seconds after a shrink before connections above the limit are closed
# A budget read that takes longer is given up (and counted as failed): the pool's loop is
# blocked, or the database does not answer.
BUDGET_READ_TIMEOUT = 10.0
# Samples (of SAMPLE_EVERY) in a row a permit must be out with no checkout behind it to
# count as held by nobody: far longer than any acquire's or return's passage.
ORPHAN_SAMPLES = 50
UNKNOWN_ROUTE = "unknown"  # the route of a leaked connection nobody was seen taking


@dataclasses.dataclass(frozen=True, slots=True)
class Autosize:
    """Settings for adaptive sizing of a pool.

    ``instrument_tortoise(autosize=True)`` takes the defaults;
    ``autosize=Autosize(min=4, max=60)`` or ``autosize={"min": 4, "max": 60}`` sets them.

    Attributes:
        min: the limit never goes below this.
        max: nor above this (``None``: the pool's own maximum size, its hard ceiling).
            The driver pool must be created at least this large.
        initial: the limit at start (``None``: ``min``). Starting small lets the
            controller learn each statement's unloaded speed.
        interval: seconds between two decisions.
        budget: connections this pool may hold at most, set by hand (MySQL, PgBouncer,
            a database shared in ways poolwatch cannot see). ``None`` on PostgreSQL:
            read from the server.
        peers: on PostgreSQL, tag this pool's connections (``application_name`` ends
            with ``pw-`` and 8 hex digits) and share the database with the other tagged
            pools it sees there: a lone pool takes all that is free but the headroom, N
            pools converge to fair shares. ``False``: take ``budget_share`` of what is
            free, and leave ``application_name`` alone.
        budget_headroom: connections left free for everyone else (``None``: 5% of
            ``max_connections``, at least 2).
        budget_share: where peers cannot be seen (PgBouncer, a role that sees no other
            session, ``peers=False``), the share of the connections still free that
            this pool may take on top of its own (with N app instances, 1/N or less).
        budget_interval: seconds between two reads of the server's limits.
        tuning: the controller's constants (:class:`~poolwatch.sizing.Tuning`).
    """

    min: int = 2
    max: int | None = None
    initial: int | None = None
    interval: float = 0.25
    budget: int | None = None
    peers: bool = True
    budget_headroom: int | None = None
    budget_share: float = 0.5
    budget_interval: float = 5.0
    tuning: Tuning = dataclasses.field(default_factory=Tuning)

    def __post_init__(self) -> None:
        _positive_int("autosize.min", self.min)
        if self.max is not None:
            _positive_int("autosize.max", self.max)
            if self.max < self.min:
                raise ConfigError("autosize.max", self.max, f"must be >= autosize.min ({self.min})")
        if self.initial is not None:
            _positive_int("autosize.initial", self.initial)
            if self.initial < self.min or (self.max is not None and self.initial > self.max):
                raise ConfigError(
                    "autosize.initial", self.initial, "must be between autosize.min and .max"
                )
        if self.budget is not None:
            _positive_int("autosize.budget", self.budget)
            if self.budget < self.min:
                raise ConfigError(
                    "autosize.budget", self.budget, f"must be >= autosize.min ({self.min})"
                )
        if not isinstance(self.peers, bool):
            raise ConfigError("autosize.peers", self.peers, "must be True or False")
        headroom = self.budget_headroom
        if headroom is not None and (
            isinstance(headroom, bool) or not isinstance(headroom, int) or headroom < 0
        ):
            raise ConfigError("autosize.budget_headroom", headroom, "must be an integer >= 0")
        _positive_float("autosize.interval", self.interval, minimum=SAMPLE_EVERY)
        _positive_float("autosize.budget_interval", self.budget_interval, minimum=0.5)
        share = self.budget_share
        if isinstance(share, bool) or not isinstance(share, (int, float)) or not 0 < share <= 1:
            raise ConfigError("autosize.budget_share", share, "must be a number in (0, 1]")
        if not isinstance(self.tuning, Tuning):
            raise ConfigError("autosize.tuning", self.tuning, "must be a poolwatch.sizing.Tuning")

    @property
    def tags_connections(self) -> bool:
        """Whether the pool's connections carry a peers tag: with ``peers`` on, unless a
        hand-set ``budget`` makes the server's limits unread."""
        return self.peers and self.budget is None

    @classmethod
    def coerce(cls, value: object) -> Autosize | None:
        """``None``/``False`` -> off; ``True`` -> defaults; a mapping -> its fields."""
        if value is None or value is False:
            return None
        if value is True:
            return cls()
        if isinstance(value, Autosize):
            return value
        if isinstance(value, Mapping):
            known = {f.name for f in dataclasses.fields(cls)}
            unknown = sorted(set(value) - known)
            if unknown:
                raise ConfigError("autosize", unknown, f"unknown keys; known: {sorted(known)}")
            return cls(**value)
        raise ConfigError("autosize", value, "must be True, False, a dict or an Autosize")

    def bounds(self, pool_max: int | None) -> tuple[int, int]:
        """``(lower, upper)`` for a pool whose driver allows ``pool_max`` connections."""
        upper = self.max if self.max is not None else pool_max
        if upper is None:
            raise ConfigError("autosize.max", None, "must be given: the pool's size is unknown")
        if pool_max is not None and upper > pool_max:
            raise ConfigError(
                "autosize.max",
                upper,
                f"must not exceed the pool's own maximum size ({pool_max}): create the "
                "pool at least that large (SQLAlchemy: pool_size + max_overflow; Tortoise: "
                "maxsize), or lower autosize.max",
            )
        return min(self.min, upper), upper


# The packages whose exceptions are a database's (or its driver's) answer to a read.
_DATABASE_PACKAGES = frozenset(
    {"asyncpg", "psycopg", "psycopg2", "pg8000", "sqlalchemy", "tortoise", "asyncmy",
     "aiomysql", "pymysql", "MySQLdb", "aiosqlite", "sqlite3"}
)  # fmt: skip


def _from_the_database(exc: BaseException) -> bool:
    """Whether a failed read is the database's answer (down, refusing, too slow), rather
    than a fault of poolwatch's own."""
    if isinstance(exc, (OSError, TimeoutError)):
        return True
    return type(exc).__module__.partition(".")[0] in _DATABASE_PACKAGES


def _positive_int(name: str, value: object) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ConfigError(name, value, "must be an integer >= 1")


def _positive_float(name: str, value: object, *, minimum: float) -> None:
    if (
        isinstance(value, bool)
        or not isinstance(value, (int, float))
        or not minimum <= value < math.inf
    ):
        raise ConfigError(name, value, f"must be a finite number of seconds >= {minimum}")


# Set around poolwatch's own statements (the budget read): they wait for a permit like
# any request (the pool never exceeds its limit), but without the acquire timeout, so a
# starved pool neither fails them nor counts them as the application's timeouts.
_own: contextvars.ContextVar[bool] = contextvars.ContextVar("poolwatch_own", default=False)


class Gate:
    """What stands in front of one pool's acquire (only where something needs it)."""

    def __init__(
        self,
        observer: PoolObserver,
        *,
        limiter: AsyncLimiter | ThreadLimiter | None = None,
        timeout: float | None = None,
        open_connections: Callable[[], int] | None = None,
        keep: int = 0,
    ) -> None:
        self.observer = observer
        self.limiter = limiter
        self.timeout = timeout
        # Connections the driver holds open (used and idle), for trimming after a shrink.
        self.open_connections = open_connections
        # The driver's own minimum: it would reopen any connection closed below it.
        self.keep = keep
        # The limiter's lowered_at once the pool was back within that lowered limit:
        # until the limit is lowered again, nothing is over it (and counting the open
        # connections, a walk over the driver's pool, is skipped on every release).
        self._trimmed_at = 0.0

    async def admit(
        self,
        acquire: Callable[[], Awaitable[T]],
        settled: Callable[[], bool] = lambda: False,
        undo: Callable[[], Awaitable[None]] | None = None,
    ) -> T:
        """Take a permit (with autosize), then ``acquire()`` from the driver, in time.

        The acquire timeout ends only the wait: once ``settled()`` says the connection
        was handed over, the rest of ``acquire()`` (a transaction's ``BEGIN``) runs in
        full. If ``acquire()`` fails, ``undo()`` gives back what it had taken, before the
        permit goes back.
        """
        if self.timeout is None or _own.get():
            return await self._admit(acquire, undo)
        deadline = WaitDeadline(self.timeout, settled)
        try:
            async with deadline:
                return await self._admit(acquire, undo)
        except TimeoutError as exc:
            if deadline.expired:
                raise self.timeout_error() from exc
            raise  # the driver's own timeout (connecting, say): not ours to rename

    async def _admit(
        self, acquire: Callable[[], Awaitable[T]], undo: Callable[[], Awaitable[None]] | None
    ) -> T:
        limiter = self.limiter if isinstance(self.limiter, AsyncLimiter) else None
        if limiter is not None:
            await limiter.acquire(first=_own.get())
        try:
            return await acquire()
        except BaseException:
            try:
                if undo is not None:
                    await undo()
            finally:
                # After the undo: a permit back before the connection would let one more
                # request in than the pool has connections. (A second cancellation during
                # the undo returns it early; the undo itself still finishes.)
                if limiter is not None:
                    limiter.release()
            raise

    async def enter(self) -> bool:
        """Only the permit (async), within the acquire timeout; False if none was taken."""
        limiter = self.limiter
        if not isinstance(limiter, AsyncLimiter):
            return False
        if self.timeout is None or _own.get():
            await limiter.acquire(first=_own.get())
            return True
        try:
            async with asyncio.timeout(self.timeout):  # only the permit: nothing to hand over
                await limiter.acquire()
        except TimeoutError as exc:
            raise self.timeout_error() from exc
        return True

    def enter_blocking(self) -> bool:
        """Only the permit, from a thread (sync pools), within the acquire timeout."""
        limiter = self.limiter
        if not isinstance(limiter, ThreadLimiter):
            return False
        own = _own.get()
        if not limiter.acquire(None if own else self.timeout, first=own):
            raise self.timeout_error()
        return True

    def limits(self) -> bool:
        """Whether an acquire takes a permit (autosize)."""
        return self.limiter is not None

    def leave(self) -> None:
        """The connection went back to the driver: give its permit back."""
        if self.limiter is not None:
            self.limiter.release()

    def over_limit(self) -> bool:
        """Whether a returning connection should be closed: the pool holds too many."""
        limiter, count = self.limiter, self.open_connections
        if limiter is None or count is None or limiter.lowered_at == self._trimmed_at:
            return False
        # Not at once after a shrink: a limit that comes back up a moment later would
        # pay to reopen them (on a computing database, its scarcest resource).
        lowered_at = limiter.lowered_at
        if time.monotonic() - lowered_at < TRIM_AFTER:
            return False
        if count() > max(limiter.limit, self.keep):
            return True
        self._trimmed_at = lowered_at
        return False

    def timeout_error(self) -> PoolTimeoutError:
        observer = self.observer
        holders = observer.holders
        limiter = self.limiter
        return PoolTimeoutError(
            observer.name,
            self.timeout or 0.0,
            limit=limiter.limit if limiter is not None else None,
            in_use=limiter.in_use if limiter is not None else observer.checked_out(),
            waiting=observer.pending(),
            holders=holders.longest(perf_counter()) if holders is not None else (),
        )


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
        more (:func:`~poolwatch.budget.peer_ceiling`): that holds while every pool grows
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


class Maintenance:
    """The periodic work of one PoolWatch: one asyncio task on a thread of its own.

    Samples every 100 ms, decisions every ``interval``, database budget reads every
    ``budget_interval``, and the leak scan every second.

    A thread of its own, not a task on the application's event loop: most apps wire
    poolwatch at import, before any loop runs, and some run one loop after another (a
    test suite's loop per test), so the controller could not count on any of them. The
    one step that must run on the application's loop, an asyncio pool's budget read
    (its connections belong to that loop, and used from another one they break the
    application's own operations on them), is sent to the loop of the pool's latest
    acquire (:meth:`_start_read`).

    Started when the first pool needs it and again, after a ``stop()`` (an app's
    lifespan shutdown) or a ``fork()``, by the next acquire (:meth:`ensure_started`).
    """

    def __init__(
        self,
        faults: FaultReporter,
        *,
        leak_threshold: float | None,
        count_leak: Callable[[str, str], None],
    ) -> None:
        self.sizers: dict[str, PoolSizer] = {}
        self.observers: Callable[[], list[PoolObserver]] = list
        # (pool, drift) for every pool, read from the drivers (see poolwatch.reconcile).
        self.drifts: Callable[[], list[tuple[str, int]]] = list
        self._unaccounted: dict[str, Unaccounted] = {}
        self._faults = faults
        self._leak_threshold = leak_threshold
        self._count_leak = count_leak
        self._task: asyncio.Task[None] | None = None
        self._starting = threading.Lock()
        forksafe.forget_in_child(self)

    @property
    def running(self) -> bool:
        """Whether the task is alive."""
        task = self._task
        return task is not None and not task.done() and not task.get_loop().is_closed()

    def ensure_started(self) -> None:
        """Start the thread and its task if they are not running (idempotent, cheap:
        called on every acquire of a pool that needs them)."""
        if self._task is not None and not self._task.done():
            return
        with self._starting:
            if self.running:
                return
            ready = threading.Event()

            async def main() -> None:
                self._task = asyncio.current_task()
                ready.set()
                await self._run()

            def run() -> None:
                with contextlib.suppress(asyncio.CancelledError):
                    asyncio.run(main())

            # A context of its own: the thread must not inherit the request that started it.
            thread = threading.Thread(
                target=contextvars.Context().run,
                args=(run,),
                name="poolwatch-maintenance",
                daemon=True,
            )
            thread.start()
            ready.wait(5)

    def after_fork(self) -> None:
        """In a child process: the parent's thread is not here; the next acquire starts
        one (see :mod:`poolwatch.forksafe`)."""
        self._task = None
        self._starting = threading.Lock()

    async def stop(self) -> None:
        """Stop the task (from the application's lifespan shutdown)."""
        self.stop_soon()

    def stop_soon(self) -> None:
        """Cancel the task without waiting (from sync code such as ``uninstrument``)."""
        task, self._task = self._task, None
        if task is not None:
            loop = task.get_loop()
            if not task.done() and not loop.is_closed():
                with contextlib.suppress(RuntimeError):  # the loop closed meanwhile
                    loop.call_soon_threadsafe(task.cancel)

    async def _run(self) -> None:
        now = perf_counter()
        next_decision: dict[str, float] = {}
        next_budget: dict[str, float] = {}
        last_budget: dict[str, float] = {}
        next_leak_scan = now + LEAK_SCAN_EVERY
        budget_reads: dict[str, asyncio.Task[None]] = {}
        while True:
            await asyncio.sleep(SAMPLE_EVERY)
            now = perf_counter()
            for name, sizer in list(self.sizers.items()):
                try:
                    sizer.sample()
                    if now >= next_decision.setdefault(name, now + sizer.settings.interval):
                        next_decision[name] = now + sizer.settings.interval
                        sizer.decide()
                    due = next_budget.get(name, now)
                    if name in last_budget and sizer.budget_blocked():
                        due = min(due, last_budget[name] + BUDGET_BLOCKED_EVERY)
                    reading = budget_reads.get(name)
                    if (
                        sizer.read_limits is not None
                        and now >= due
                        and (reading is None or reading.done())
                    ):
                        started = self._start_read(sizer)
                        if started is not None:  # else: its pool is not in use yet
                            budget_reads[name] = started
                            last_budget[name] = now
                            next_budget[name] = now + sizer.settings.budget_interval
                except Exception as exc:
                    self._faults.report("autosize", exc)
            if self._leak_threshold is not None and now >= next_leak_scan:
                next_leak_scan = now + LEAK_SCAN_EVERY
                self._scan_leaks(now, self._leak_threshold)

    def _start_read(self, sizer: PoolSizer) -> asyncio.Task[None] | None:
        """Start a read of ``sizer``'s budget where its pool lives; ``None`` if it cannot
        be read now (an asyncio pool not used yet, or whose loop has ended).

        A sync pool's reader runs the statement in a worker thread of its own; an
        asyncio pool's must run on the loop its connections belong to, the loop of its
        latest acquire.
        """
        limiter = sizer.limiter
        if not isinstance(limiter, AsyncLimiter):
            return asyncio.create_task(self._settle_read(sizer, self._read(sizer)))
        home = limiter.loop
        if home is None or home.is_closed() or not home.is_running():
            return None
        remote = asyncio.run_coroutine_threadsafe(self._read(sizer), home)
        return asyncio.create_task(self._settle_read(sizer, asyncio.wrap_future(remote)))

    @staticmethod
    async def _read(sizer: PoolSizer) -> tuple[ServerLimits, int, float]:
        """The server's limits, the connections the pool held before the read, and when
        the read started."""
        read_limits = sizer.read_limits
        if read_limits is None:
            raise PoolWatchError(f"pool {sizer.name!r} has no budget reader")
        # poolwatch's own statement: first in the pool's queue, without the acquire
        # timeout, and in a scope of its own rather than any route's.
        token = _own.set(True)
        try:
            held = sizer.open_connections()
            started = perf_counter()
            with context.scope("poolwatch:budget"):
                return await read_limits(), held, started
        finally:
            _own.reset(token)

    async def _settle_read(
        self, sizer: PoolSizer, reading: Awaitable[tuple[ServerLimits, int, float]]
    ) -> None:
        """Wait for a read (bounded) and apply its verdict, or count its failure."""
        try:
            async with asyncio.timeout(BUDGET_READ_TIMEOUT):
                limits, held, started = await reading
        except Exception as exc:
            self._budget_unread(sizer, exc)
            return
        self._apply(sizer, limits, held, started)

    async def _read_budget(self, sizer: PoolSizer) -> None:
        """Read ``sizer``'s budget from the caller's own loop and apply it."""
        await self._settle_read(sizer, self._read(sizer))

    def _apply(self, sizer: PoolSizer, limits: ServerLimits, held: int, started: float) -> None:
        try:
            sizer.apply_budget(limits, held, started)
        except Exception as exc:
            self._faults.report("budget", exc)
            return
        if sizer.budget_failures >= BUDGET_TRIES:
            logger.warning("pool %s: the database's connection budget is read again", sizer.name)
        sizer.budget_failures = 0

    def _budget_unread(self, sizer: PoolSizer, exc: Exception) -> None:
        """A read failed: the limit in force stays within the last budget read (or the
        starting limit), and the failure shows in a metric and, once per run, a log."""
        sizer.budget_failures += 1
        try:
            sizer.report.budget_failed(sizer.name)
        except Exception as err:
            self._faults.report("budget", err)
        if not _from_the_database(exc):
            self._faults.report("budget", exc)  # not the database's answer: ours
        if sizer.budget_failures == 1:  # once per run of failures, without a traceback
            logger.warning(
                "pool %s: reading the database's connection budget failed (%s: %s); "
                "trying again every %.0f s",
                sizer.name,
                type(exc).__name__,
                exc,
                sizer.settings.budget_interval,
            )
        if sizer.budget_failures == BUDGET_TRIES:
            logger.error(
                "pool %s: the database's connection budget could not be read %d times in "
                "a row; autosize keeps the limit at %d at most (the last budget read, or "
                "the starting limit) until a read succeeds. Set autosize.budget to size "
                "the pool without reading it.",
                sizer.name,
                BUDGET_TRIES,
                sizer.effective_max(),
            )

    def _scan_leaks(self, now: float, threshold: float) -> None:
        for observer in self.observers():
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
            self._scan_unaccounted(now, threshold)
        except Exception as exc:
            self._faults.report("leaks", exc)

    def _scan_unaccounted(self, now: float, threshold: float) -> None:
        """Connections the driver has had out all along the threshold, that no checkout
        poolwatch saw accounts for: taken around the ORM, or lost by an entry poolwatch
        could not undo. There is no line to name, only the count."""
        for name, off in self.drifts():
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
