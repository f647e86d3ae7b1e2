"""Transactions: how a Tortoise transaction block ends, commit or rollback.

A transaction block starts when its entry has sent ``BEGIN`` and ends with its exit
(:mod:`.checkouts` reports both). Tortoise commits a block that exits cleanly and rolls
back one that raises, unless the application called the transaction's ``rollback()``
itself inside the block: so each transaction client's ``rollback`` is wrapped to mark its
open block (:class:`Open`) as rolled back.

``rollback`` is public API of Tortoise's transaction clients; no private attribute is
touched here.
"""

from __future__ import annotations

import functools
from collections.abc import Coroutine
from time import perf_counter
from typing import Any

from poolwatch.adapters.tortoise.statements import AsyncMethod
from poolwatch.events import COMMIT, ROLLBACK, ROLLED_BACK_BY_ERROR, PoolEvents

__all__ = ["Open", "ending", "outcome_of", "wrap_rollback"]


class Open:
    """A transaction block inside its ``async with``: since when, and whether the
    application called the transaction's ``rollback()`` itself."""

    __slots__ = ("rolled_back", "since")

    def __init__(self, since: float) -> None:
        self.since = since
        self.rolled_back = False


def wrap_rollback(original: AsyncMethod, began: dict[int, Open]) -> AsyncMethod:
    """A transaction client's ``rollback`` that marks its block in ``began`` (open blocks,
    by their transaction clients' ids) as rolled back by the application."""

    @functools.wraps(original)
    def rollback(self: Any) -> Coroutine[Any, Any, Any]:
        # Inside the block only: the rollback of an exit comes after the exit took
        # the block out of ``began``, and is counted by the exit itself.
        state = began.get(id(self))
        if state is not None:
            state.rolled_back = True
        return original(self)

    return rollback


def outcome_of(exc_type: Any, rolled_back: bool) -> str:
    """How a transaction block that is exiting ends, if its exit goes through: an
    exception rolls it back (Tortoise's rule in every version), else it commits, unless the
    application already rolled back itself (a ``commit()`` of its own is a commit)."""
    if exc_type is not None:
        return ROLLED_BACK_BY_ERROR
    return ROLLBACK if rolled_back else COMMIT


async def ending(
    exit_: Coroutine[Any, Any, Any], events: PoolEvents, outcome: str, since: float
) -> Any:
    """A transaction block's exit, then its outcome (an error if the COMMIT failed)."""
    try:
        result = await exit_
    except BaseException:
        events.transaction_finished(ROLLED_BACK_BY_ERROR, perf_counter() - since)
        raise
    events.transaction_finished(outcome, perf_counter() - since)
    return result
