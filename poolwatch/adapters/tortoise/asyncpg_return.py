"""The moment asyncpg takes a connection back into its pool, for autosize's permits.

A permit may go back only once the driver has the connection again: given back earlier,
the request it lets through would find no idle connection and open one more than the
limit. But asyncpg returns a connection in a task of its own (``Pool.release`` shields
it), so the release a caller awaits ends one or two event-loop turns after the
connection is back in asyncpg's queue. Handing the permit on only then leaves the
connection idle for those turns while requests wait for it: on a pool running a few
thousand statements a second, 6% fewer connections at work than asyncpg's own queue
keeps busy.

So the permit goes back from inside asyncpg's return, ``PoolConnectionHolder._release``:
a private method, wrapped here and nowhere else, on the asyncpg versions it was read on;
on any other the caller falls back to giving the permit back after the release.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable
from typing import Any

from poolwatch.adapters import major_minor

__all__ = ["Pending", "ReturnHook", "asyncpg_version"]

logger = logging.getLogger("poolwatch.asyncpg")

TESTED = ((0, 29), (0, 33))  # [from, to): the versions whose PoolConnectionHolder was read


def asyncpg_version() -> tuple[int, int] | None:
    """asyncpg's ``(major, minor)``, or ``None`` if it is not installed."""
    try:
        import asyncpg
    except ImportError:
        return None
    return major_minor(asyncpg.__version__)


class Pending:
    """One checkout's callback, waiting for its connection to be back."""

    __slots__ = ("callback", "holder", "ran")

    def __init__(self, holder: int, callback: Callable[[], None]) -> None:
        self.holder = holder
        self.callback = callback
        self.ran = False


class ReturnHook:
    """Runs a callback when asyncpg puts a given connection's holder back in its queue."""

    def __init__(self) -> None:
        # id(holder) -> the checkout waiting for it to be back. A holder goes back and is
        # handed out again before the first checkout's release has even returned, so each
        # checkout's entry is its own object, never confused with the next one's.
        self._waiting: dict[int, Pending] = {}
        self._undo: Callable[[], None] | None = None

    @property
    def installed(self) -> bool:
        return self._undo is not None

    def install(self) -> bool:
        """Wrap ``PoolConnectionHolder._release``; False (and nothing done) if this asyncpg
        is not one the wrapper was written for."""
        version = asyncpg_version()
        if version is None or not TESTED[0] <= version < TESTED[1]:
            if version is not None:
                logger.info(
                    "asyncpg %d.%d: autosize permits go back after the release ends", *version
                )
            return False
        from asyncpg.pool import PoolConnectionHolder

        original = PoolConnectionHolder.__dict__.get("_release")
        if original is None:
            return False
        waiting = self._waiting

        @functools.wraps(original)
        def _release(holder: Any) -> None:
            pending = waiting.pop(id(holder), None)
            original(holder)
            if pending is not None:
                pending.ran = True
                pending.callback()

        PoolConnectionHolder._release = _release

        def undo() -> None:
            PoolConnectionHolder._release = original

        self._undo = undo
        return True

    def uninstall(self) -> None:
        if self._undo is not None:
            self._undo()
            self._undo = None
        # Whoever still waits gets its callback from the fallback path.

    def when_back(self, connection: Any, callback: Callable[[], None]) -> Pending | None:
        """Run ``callback`` when ``connection`` (a pool's proxy) is back in its pool.

        Returns what to :meth:`cancel`, or ``None`` if the hook cannot see this
        connection (not installed, or not a pool's connection): then the caller runs the
        callback itself after the release.
        """
        holder = getattr(connection, "_holder", None) if self._undo is not None else None
        if holder is None:
            return None
        pending = self._waiting[id(holder)] = Pending(id(holder), callback)
        return pending

    def cancel(self, pending: Pending) -> bool:
        """Forget ``pending``; True if its callback had not run (the caller runs it now)."""
        if pending.ran:
            return False
        if self._waiting.get(pending.holder) is pending:
            del self._waiting[pending.holder]
        pending.ran = True
        return True
