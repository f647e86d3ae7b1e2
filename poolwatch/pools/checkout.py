"""One connection out of the pool, and whether it was held across a wait (a ``held_idle``
finding).

Each gap between two statements (or between the line that took the connection and the
first statement, or the last statement and the release) is judged by what the
application's code between the two lines waits on, as :class:`CodeReader` reads it
(see :mod:`.reader`), so that the same code gets the same verdict however busy the
machine is:

* **a wait the code names** (a function sent to the thread pool, a network call, a
  sleep) makes the checkout a finding, named after it, whatever the gap's length: code
  that holds a connection across the thread pool waits for a free worker when the pool
  is busy, however quick the function. A wait on some paths only (an ``if`` branch,
  the right of an ``or``) is named as such: whether it ran in one request cannot be
  told from the thread (another thread's turn with the GIL blocks it as well);
* **code that waits on nothing** (read whole, only work on the CPU) is no finding,
  however far a busy machine stretched it;
* **code that cannot be read** (not found, or a call that may wait unnamed) falls back
  on what was measured: the longest gap of at least :data:`HELD_IDLE_MIN` in which the
  thread blocked, with under :data:`AWAITED_CPU_SHARE` of it on the CPU, in a checkout
  idle for more than half of its hold.

The connection's own work between statements (a BEGIN, a COMMIT, a ROLLBACK, the pool's
reset) is set aside: it blocks on the database, and says nothing of the application.
"""

from __future__ import annotations

from collections.abc import Callable
from threading import get_ident
from time import perf_counter, thread_time
from typing import NamedTuple, Protocol

from poolwatch.pools.waits import NOTHING, Reading, Wait

__all__ = [
    "AWAITED_CPU_SHARE",
    "HELD_IDLE_MIN",
    "Checkout",
    "CodeReader",
    "thread_usage",
]

# A checkout idle this long in one gap, and for more than half its hold, is a finding
# (held_idle) where the code cannot be read: long enough that no driver round trip or
# event-loop turn explains it.
HELD_IDLE_MIN = 0.1
# A measured gap counts only if its thread blocked in it (a voluntary context switch: a
# sleep, a socket, a queue, an event loop with nothing to run) and spent less than this
# share of it on the CPU. Work between two statements, such as an ORM's first-use mapper
# set-up or result processing, never blocks, however far a loaded machine stretches it
# past HELD_IDLE_MIN by preempting it.
AWAITED_CPU_SHARE = 0.5


try:  # Linux; macOS has no per-thread usage, Windows no resource module
    import resource

    _RUSAGE_THREAD: int | None = resource.RUSAGE_THREAD
except (ImportError, AttributeError):
    _RUSAGE_THREAD = None


def thread_usage() -> tuple[float, int]:
    """The calling thread's CPU seconds, and how many times it blocked (``-1``: unknown
    on this platform, where only the CPU time tells)."""
    if _RUSAGE_THREAD is None:
        return thread_time(), -1
    usage = resource.getrusage(_RUSAGE_THREAD)
    return usage.ru_utime + usage.ru_stime, usage.ru_nvcsw


class CodeReader(Protocol):
    """Says what the application's code between two statements waits on
    (:class:`~.reader.WaitReader`)."""

    def between(self, before: str, after: str) -> Reading:
        """What runs after the statement of call path ``before`` and until the one (or
        the release) of ``after`` waits on (``after=""``: a release, its line not
        known)."""
        ...

    def after(self, before: str) -> Reading:
        """What runs after the statement of ``before`` until its functions return waits
        on: where that is nothing, the release (found by a stack walk) need not be."""
        ...


class _Gap(NamedTuple):
    """A gap that ended as a statement started, judged once its call path is known."""

    seconds: float
    awaited: bool
    """At least :data:`HELD_IDLE_MIN`, the thread blocked in it, and spent it mostly off
    the CPU: what a measured held_idle gap needs."""


class Checkout:
    """One connection out of the pool: since when, for which route, how long its
    statements ran (the rest of the hold is the connection held while idle), and, where
    held_idle findings are looked for (``cpu`` set), its longest gap over a wait the
    code names (``known``, between ``known_before`` and ``known_after``) and its longest
    measured one where the code could not be read (``gap``, between ``before`` and
    ``after``); "" stands for the checkout, or the release."""

    __slots__ = (
        "after",
        "aside",
        "before",
        "cpu",
        "fresh",
        "gap",
        "known",
        "known_after",
        "known_before",
        "known_gap",
        "last",
        "last_cpu",
        "last_path",
        "last_switches",
        "open",
        "outer",
        "owed",
        "pausing",
        "pending",
        "reader",
        "route",
        "since",
        "statements",
        "thread",
        "transaction",
    )

    def __init__(
        self,
        since: float,
        route: str,
        cpu: Callable[[], tuple[float, int]] | None,
        outer: Checkout | None,
    ) -> None:
        self.since = since
        self.route = route
        # The checkout its task (or thread) held when it took this one (a session's,
        # while a helper's quick read ran on a second connection): once this one is
        # back, the statements are the outer one's again (see PoolObserver._holding).
        self.outer = outer
        # Released while its own statement was still being timed (in_flight): that
        # statement, reported next, is this checkout's and no other's.
        self.owed = False
        self.transaction = False  # a transaction began on it
        self.statements = 0.0
        self.open = True
        self.cpu = cpu
        self.reader: CodeReader | None = None
        self.fresh = True  # no statement yet
        self.last = since  # when the last statement ended
        self.last_cpu, self.last_switches = cpu() if cpu is not None else (0.0, 0)
        # The thread last_cpu was read in: another thread's usage says nothing of the gap
        # (a FastAPI sync dependency, the sync endpoint and the teardown each run in a
        # worker thread of their own).
        self.thread = get_ident() if cpu is not None else 0
        self.last_path = ""
        # The connection's own work since the last statement (seconds, CPU seconds,
        # blocks), set aside; and where such work started, while it runs.
        self.aside = (0.0, 0.0, 0)
        self.pausing: tuple[float, float, int] | None = None
        self.pending: _Gap | None = None
        self.gap = 0.0
        self.before = ""
        self.after = ""
        self.known: Wait | None = None
        self.known_gap = 0.0
        self.known_before = ""
        self.known_after = ""

    def reading(self, reader: CodeReader, taken: str) -> None:
        """Judge the gaps by what ``reader`` says of the code; the connection was taken
        at call path ``taken`` ("": not known)."""
        self.reader, self.last_path = reader, taken

    def starting(self) -> None:
        """A statement is about to be sent: the gap since the last one ends here, before
        the statement's own wait for the database (which blocks, and would make any gap
        look awaited)."""
        if self.cpu is not None:
            self.pending = self._measure(perf_counter())

    def ran(self, seconds: float, path: str) -> None:
        """A statement of ``seconds`` ended just now, called from ``path``."""
        self.statements += seconds
        cpu = self.cpu
        if cpu is None:
            return
        pending, self.pending = self.pending, None
        fresh, self.fresh = self.fresh, False
        if pending is not None:
            reader, before = self.reader, self.last_path
            found = None  # not read: a statement with no path (of no application code)
            if fresh and path and before == path:
                found = NOTHING  # the statement took its own connection: nothing between
            elif reader is not None and before and path:
                found = reader.between(before, path)
            self._judge(pending, found, path)
        self.last, self.last_path = perf_counter(), path
        self.last_cpu, self.last_switches = cpu()
        self.thread = get_ident()
        self.aside = (0.0, 0.0, 0)

    def busy(self, busy: bool) -> None:
        """The connection starts (``busy``) or ends work of its own (a BEGIN, a COMMIT,
        a ROLLBACK, the pool's reset): its time and blocks are set aside."""
        cpu = self.cpu
        if cpu is None:
            return
        if busy:
            self.pausing = (perf_counter(), *cpu())
            return
        pausing, self.pausing = self.pausing, None
        if pausing is None:
            return
        now, (used, switches) = perf_counter(), cpu()
        seconds, cpu_seconds, blocks = self.aside
        self.aside = (
            seconds + now - pausing[0],
            cpu_seconds + used - pausing[1],
            blocks + switches - pausing[2],
        )

    def ended(self, now: float, release: Callable[[], str]) -> None:
        """The connection went back ``now``: the gap since the last statement counts.
        ``release()`` is the releasing line's call path (a stack walk): asked only when
        the code after the last statement may wait on something."""
        if self.cpu is None:
            return
        gap = self._measure(now)
        reader, before = self.reader, self.last_path
        found, path = None, ""
        if reader is not None and before:
            found = reader.after(before)
            if found.wait is not None or not found.known:
                path = release()
                found = reader.between(before, path)
        self._judge(gap, found, path)

    def held_idle(self, held: float, idle: float) -> bool:
        """Whether this checkout, held ``held`` seconds and ``idle`` of them running no
        statement, was held across a wait: one the code names, or one measured."""
        if self.known is not None:
            return True
        return idle >= HELD_IDLE_MIN and 2 * idle > held and self.gap >= HELD_IDLE_MIN

    def _measure(self, until: float) -> _Gap:
        """The gap from the last statement's end ``until`` then, less the connection's
        own work in it."""
        aside_seconds, aside_cpu, aside_blocks = self.aside
        seconds = until - self.last - aside_seconds
        if seconds < HELD_IDLE_MIN or self.cpu is None or get_ident() != self.thread:
            # Too short to be a measured wait, as most gaps are (microseconds): the
            # thread's usage is not read. A gap that began in another thread cannot be
            # measured (the code between its lines is still read).
            return _Gap(seconds, awaited=False)
        used, switches = self.cpu()
        off_cpu = used - self.last_cpu - aside_cpu < AWAITED_CPU_SHARE * seconds
        # Where blocks are not counted, the CPU share alone decides.
        blocked = switches < 0 or switches - self.last_switches > aside_blocks
        return _Gap(seconds, blocked and off_cpu)

    def _judge(self, gap: _Gap, found: Reading | None, after: str) -> None:
        """Keep ``gap`` (from the last statement to ``after``) if it is the longest over
        a wait ``found`` names, or, where the code was not read, the longest measured."""
        if found is not None and found.wait is not None:
            if gap.seconds >= self.known_gap:
                self.known, self.known_gap = found.wait, gap.seconds
                self.known_before, self.known_after = self.last_path, after
            return
        if found is not None and found.known:
            return  # only work on the CPU, however long it took
        if gap.awaited and gap.seconds >= HELD_IDLE_MIN and gap.seconds > self.gap:
            self.gap, self.before, self.after = gap.seconds, self.last_path, after
