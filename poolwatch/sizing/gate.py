"""What stands in front of one pool's acquire: :class:`Gate`.

The resizable limiter (with autosize), the acquire timeout that raises
:class:`~poolwatch.PoolTimeoutError`, and the permit given back after release. Where
nothing needs it (no autosize, no acquire timeout), a pool has no gate at all.
"""

from __future__ import annotations

import asyncio
import contextvars
import time
from collections.abc import Awaitable, Callable
from time import perf_counter
from typing import TypeVar

from poolwatch.errors import PoolTimeoutError
from poolwatch.pools.observer import PoolObserver
from poolwatch.sizing.deadline import WaitDeadline
from poolwatch.sizing.limiter import AsyncLimiter, ThreadLimiter

__all__ = ["TRIM_AFTER", "Gate", "own_statement"]

T = TypeVar("T")

TRIM_AFTER = 3.0  # seconds after a shrink before connections above the limit are closed

# Set around poolwatch's own statements (the budget read): they wait for a permit like
# any request (the pool never exceeds its limit), but without the acquire timeout, so a
# starved pool neither fails them nor counts them as the application's timeouts.
_own: contextvars.ContextVar[bool] = contextvars.ContextVar("poolwatch_own", default=False)


def own_statement() -> contextvars.Token[bool]:
    """Mark what follows, in this context, as poolwatch's own statement (the budget
    read); hand the token to ``_own.reset``."""
    return _own.set(True)


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
