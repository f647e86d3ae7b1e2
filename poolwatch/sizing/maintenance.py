"""The periodic work of one PoolWatch: :class:`Maintenance`, one asyncio task on a
thread of its own.

Samples every 100 ms and decisions every ``interval`` (:class:`~.sizer.PoolSizer`),
database budget reads every ``budget_interval``, and the leak scan every second
(:class:`~poolwatch.pools.leaks.LeakScan`).
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import logging
import threading
from collections.abc import Awaitable, Callable
from time import perf_counter

from poolwatch import context, forksafe
from poolwatch.errors import PoolWatchError
from poolwatch.pools.leaks import LeakScan
from poolwatch.pools.observer import PoolObserver
from poolwatch.safety import FaultReporter
from poolwatch.sizing.budget import ServerLimits
from poolwatch.sizing.gate import _own
from poolwatch.sizing.limiter import AsyncLimiter
from poolwatch.sizing.settings import SAMPLE_EVERY
from poolwatch.sizing.sizer import PoolSizer

__all__ = ["BUDGET_READ_TIMEOUT", "BUDGET_TRIES", "Maintenance"]

logger = logging.getLogger("poolwatch.autosize")

LEAK_SCAN_EVERY = 1.0
BUDGET_TRIES = 3  # failed budget reads before growing without one
# While requests wait and the budget (not the pool's max) holds the limit, the budget is
# read again this soon instead of after budget_interval: growth waits for a fresh read,
# and a peer that left (or shrank) frees its share within a second, not minutes.
BUDGET_BLOCKED_EVERY = 0.5
# A budget read that takes longer is given up (and counted as failed): the pool's loop is
# blocked, or the database does not answer.
BUDGET_READ_TIMEOUT = 10.0

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
        # (pool, drift) for every pool, read from the drivers (see poolwatch.pools.reconcile).
        self.drifts: Callable[[], list[tuple[str, int]]] = list
        self._faults = faults
        self.leaks = (
            None if leak_threshold is None else LeakScan(leak_threshold, count_leak, faults)
        )
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
            if self.leaks is not None and now >= next_leak_scan:
                next_leak_scan = now + LEAK_SCAN_EVERY
                try:
                    self.leaks.scan(now, self.observers(), self.drifts())
                except Exception as exc:
                    self._faults.report("leaks", exc)

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
