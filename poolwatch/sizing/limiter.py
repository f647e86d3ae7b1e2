"""A semaphore whose size changes while it is held: the effective limit of a pool.

The driver's pool is created at a hard ceiling; this limiter sits in front of its
acquire, so a new limit takes effect at once in both directions. Growing wakes as many
waiters as there are new permits; shrinking takes no connection away from anyone, the
permits simply are not handed out again until use falls below the new limit.

Two flavours with the same counters: :class:`AsyncLimiter` for asyncio pools (one event
loop), :class:`ThreadLimiter` for pools used from threads (sync SQLAlchemy). Waiters are
served first come, first served in the asyncio one; a cancelled or timed-out waiter
never keeps a permit, even one granted to it in the same instant it was cancelled.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
from collections import deque
from typing import Protocol

__all__ = ["AsyncLimiter", "Limiter", "ThreadLimiter"]


class Limiter(Protocol):
    """What the sizer reads and sets, whichever flavour."""

    @property
    def limit(self) -> int: ...

    @property
    def in_use(self) -> int: ...

    @property
    def waiting(self) -> int: ...

    lowered_at: float

    def set_limit(self, limit: int) -> None: ...

    def release(self) -> None: ...

    def after_fork(self) -> None: ...


def _check(limit: int) -> int:
    if not isinstance(limit, int) or isinstance(limit, bool) or limit < 1:
        raise ValueError(f"limit={limit!r}: must be an integer >= 1")
    return limit


class AsyncLimiter:
    """An asyncio semaphore with a settable size."""

    def __init__(self, limit: int) -> None:
        self._limit = _check(limit)
        self._in_use = 0
        self._waiters: deque[asyncio.Future[None]] = deque()
        # The loop of the latest acquire: where the pool's connections live, and where
        # its waiters wait.
        self._loop: asyncio.AbstractEventLoop | None = None
        # time.monotonic() of the last decrease (trimming waits a little after it).
        self.lowered_at = 0.0

    @property
    def limit(self) -> int:
        """Permits allowed out at once."""
        return self._limit

    @property
    def in_use(self) -> int:
        """Permits out now (may exceed ``limit`` right after a shrink)."""
        return self._in_use

    @property
    def waiting(self) -> int:
        """Acquires waiting for a permit."""
        return sum(1 for waiter in self._waiters if not waiter.done())

    @property
    def loop(self) -> asyncio.AbstractEventLoop | None:
        """The event loop of the latest acquire (``None`` before the first)."""
        return self._loop

    def set_limit(self, limit: int) -> None:
        """Change the size; waiters are woken if it grew. Callable from any thread."""
        limit = _check(limit)
        if limit < self._limit:
            self.lowered_at = time.monotonic()
        self._limit = limit
        loop = self._loop
        if loop is not None and not _running_in(loop):
            # Futures belong to their loop: wake its waiters from there.
            if not loop.is_closed():
                loop.call_soon_threadsafe(self._wake)
            return
        self._wake()

    async def acquire(self, *, first: bool = False) -> None:
        """Wait for a permit. Cancel it (or time it out) freely: nothing leaks.

        ``first`` puts this acquire at the head of the queue (poolwatch's own reads).
        """
        loop = self._loop = asyncio.get_running_loop()
        if self._in_use < self._limit and not self._waiters:
            self._in_use += 1
            return
        waiter: asyncio.Future[None] = loop.create_future()
        if first:
            self._waiters.appendleft(waiter)
        else:
            self._waiters.append(waiter)
        try:
            await waiter
        except BaseException:
            if waiter.done() and not waiter.cancelled():
                # Granted, then cancelled before this task ran again: pass it on.
                self.release()
            else:
                with contextlib.suppress(ValueError):
                    self._waiters.remove(waiter)
            raise

    def release(self) -> None:
        """Give a permit back."""
        if self._in_use <= 0:
            raise RuntimeError("release() without a matching acquire()")
        self._in_use -= 1
        self._wake()

    def after_fork(self) -> None:
        """Forget every permit and waiter: in a child process after ``fork()``, where
        the parent's holders and waiting tasks do not exist."""
        self._waiters = deque()
        self._in_use = 0
        self._loop = None

    def _wake(self) -> None:
        waiters = self._waiters
        while waiters and self._in_use < self._limit:
            waiter = waiters.popleft()
            if not waiter.done():  # a cancelled waiter is skipped, its slot stays free
                self._in_use += 1
                waiter.set_result(None)


def _running_in(loop: asyncio.AbstractEventLoop) -> bool:
    try:
        return asyncio.get_running_loop() is loop
    except RuntimeError:
        return False


class _Waiter:
    """One thread waiting for a permit: a lock it blocks on until granted."""

    __slots__ = ("granted", "lock")

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.lock.acquire()  # held until the waiter is woken: the thread blocks on it
        self.granted = False


class ThreadLimiter:
    """A threading semaphore with a settable size, first come, first served.

    A plain condition variable wakes an arbitrary thread, and a thread arriving just as a
    permit comes back takes it before the woken one runs: under a queue that turns over
    every few milliseconds, an unlucky thread can wait seconds, and time out, behind
    threads that came after it. Here a returned permit is handed to the head of the queue
    directly, and a newcomer takes a free permit only when nobody waits.
    """

    def __init__(self, limit: int) -> None:
        self._limit = _check(limit)
        self._in_use = 0
        self._waiters: deque[_Waiter] = deque()
        self._mutex = threading.Lock()
        # time.monotonic() of the last decrease (trimming waits a little after it).
        self.lowered_at = 0.0

    @property
    def limit(self) -> int:
        """Permits allowed out at once."""
        return self._limit

    @property
    def in_use(self) -> int:
        """Permits out now (may exceed ``limit`` right after a shrink)."""
        return self._in_use

    @property
    def waiting(self) -> int:
        """Threads waiting for a permit."""
        return len(self._waiters)

    def set_limit(self, limit: int) -> None:
        """Change the size; waiting threads are woken if it grew."""
        limit = _check(limit)
        with self._mutex:
            if limit < self._limit:
                self.lowered_at = time.monotonic()
            self._limit = limit
            self._grant()

    def acquire(self, timeout: float | None = None, *, first: bool = False) -> bool:
        """Wait up to ``timeout`` seconds (forever if ``None``); False if it ran out.

        ``first`` puts this acquire at the head of the queue (poolwatch's own reads).
        """
        with self._mutex:
            if self._in_use < self._limit and not self._waiters:
                self._in_use += 1
                return True
            waiter = _Waiter()
            if first:
                self._waiters.appendleft(waiter)
            else:
                self._waiters.append(waiter)
        woken = waiter.lock.acquire(timeout=-1 if timeout is None else max(0.0, timeout))
        if woken:
            return True
        with self._mutex:
            if waiter.granted:  # granted in the instant the wait ran out: keep it
                return True
            self._waiters.remove(waiter)
            return False

    def release(self) -> None:
        """Give a permit back (to the first waiter, if any)."""
        with self._mutex:
            if self._in_use <= 0:
                raise RuntimeError("release() without a matching acquire()")
            self._in_use -= 1
            self._grant()

    def after_fork(self) -> None:
        """Forget every permit and waiter: in a child process after ``fork()``, where
        the parent's holders and waiting threads do not exist (and a lock another
        parent thread held at the fork would never be released)."""
        self._mutex = threading.Lock()
        self._waiters = deque()
        self._in_use = 0

    def _grant(self) -> None:
        """Hand free permits to the waiters in order (called with the mutex held)."""
        waiters = self._waiters
        while waiters and self._in_use < self._limit:
            waiter = waiters.popleft()
            waiter.granted = True
            self._in_use += 1
            waiter.lock.release()
