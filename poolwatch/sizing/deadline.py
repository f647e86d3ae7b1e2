"""A timeout that ends only a wait, never what follows the hand-over.

``asyncio.timeout`` around a whole acquire cancels whatever the task is doing when time
runs out. For a connection that is fine while the task waits, and ruinous once it holds
one: Tortoise's transaction entry takes the connection, then sends ``BEGIN``; a timeout
landing on the ``BEGIN`` leaves the connection taken by an entry that then fails, and
``async with`` never calls ``__aexit__`` for a failed entry. Measured, that lost a pool
of 10 within one round of 2,000 requests.

:class:`WaitDeadline` behaves like ``asyncio.timeout`` (same cancel-and-uncancel dance,
so an outer cancellation is never swallowed) but expires only while ``settled()`` is
false: once the connection is handed over, the rest runs in full.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from types import TracebackType

__all__ = ["WaitDeadline"]


class WaitDeadline:
    """``async with WaitDeadline(seconds, settled):`` raises ``TimeoutError`` if the block
    is still waiting (``settled()`` false) after ``seconds``.

    ``expired`` tells afterwards whether this deadline (and not an outer cancellation or
    timeout) ended the block.
    """

    __slots__ = ("_cancelling", "_handle", "_seconds", "_settled", "_task", "expired")

    def __init__(self, seconds: float, settled: Callable[[], bool]) -> None:
        self._seconds = seconds
        self._settled = settled
        self._task: asyncio.Task[object] | None = None
        self._handle: asyncio.TimerHandle | None = None
        self._cancelling = 0
        self.expired = False

    async def __aenter__(self) -> WaitDeadline:
        task = asyncio.current_task()
        if task is None:
            raise RuntimeError("WaitDeadline must be used inside a task")
        self._task = task
        self._cancelling = task.cancelling()
        self._handle = asyncio.get_running_loop().call_later(self._seconds, self._expire)
        return self

    def _expire(self) -> None:
        self._handle = None
        task = self._task
        if task is None or self._settled():
            return  # handed over: from here on the block is no longer waiting
        if task.cancelling() > self._cancelling:
            # Already being cancelled by someone else: a second cancellation would only
            # interrupt the driver's own clean-up (psycopg_pool drops the connection then).
            return
        self.expired = True
        task.cancel()

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None
        task = self._task
        # Ours to turn into a TimeoutError only if nobody else asked for the cancellation
        # meanwhile (asyncio.timeout's rule); uncancel() once for the cancel we sent.
        if (
            self.expired
            and task is not None
            and task.uncancel() <= self._cancelling
            and exc_type is asyncio.CancelledError
        ):
            raise TimeoutError from exc
