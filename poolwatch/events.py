"""The interface between adapters and the rest of poolwatch.

An adapter (Tortoise, SQLAlchemy) knows how to see what a pool and its connections do; it
reports that to a :class:`PoolEvents` it is given, and offers a :class:`PoolProbe` that
reads the pool's own counters at scrape time. Neither side knows about Prometheus.
"""

from __future__ import annotations

from typing import NamedTuple, Protocol

__all__ = ["PoolEvents", "PoolProbe", "PoolState"]


class PoolState(NamedTuple):
    """What a pool reports about itself right now.

    ``used`` / ``idle`` are ``None`` where the driver cannot tell (poolwatch then counts
    its own checkouts); ``max`` is ``None`` for pools without a limit (``NullPool``).
    """

    used: int | None
    idle: int | None
    max: int | None


class PoolProbe(Protocol):
    """Reads a pool's own counters. Called at scrape time, never on the hot path."""

    def __call__(self) -> PoolState | None:
        """The pool's state, or ``None`` when the pool does not exist (yet)."""
        ...


class PoolEvents(Protocol):
    """What adapters report, per pool. Implementations never raise."""

    name: str

    def acquire_started(self) -> int:
        """A task starts waiting for a connection; returns a ticket for the outcome."""
        ...

    def acquire_succeeded(self, ticket: int, holder: int, connect_seconds: float = 0.0) -> None:
        """The waiter got a connection; ``holder`` identifies this checkout until release.

        ``connect_seconds`` is the part of the acquire spent opening a new connection: it
        is reported as creation time, and left out of the wait time.
        """
        ...

    def acquire_failed(self, ticket: int, exc: BaseException) -> None:
        """The waiter gave up: timeout, cancellation or a connection error."""
        ...

    def released(self, holder: int) -> None:
        """The checkout ``holder`` went back to the pool (or was discarded)."""
        ...

    def connection_created(self, seconds: float) -> None:
        """A new database connection took ``seconds`` to open."""
        ...

    def query(self, sql: str, seconds: float, failed: bool) -> None:
        """One statement ran (its text only; parameters are never passed here)."""
        ...
