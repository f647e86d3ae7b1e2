"""Awaiting work that a cancellation must never cut short: returning a connection.

A caller that is cancelled while it waits for a connection's return must only stop
*waiting*: the return itself has to finish, or the pool loses the connection.
``asyncio.shield`` does that with a task per call, and a task costs two or three
event-loop turns: on Tortoise over psycopg, 8-9% of the throughput of a loop of primary-key
reads, although almost every return finishes without ever suspending.

:func:`complete` runs the work inline and only hands it to a shielded task of its own at
its first real suspension, so the common case costs nothing. :func:`complete_in_task`
always uses the task (for rare paths, where simple beats cheap).
"""

from __future__ import annotations

import asyncio
import types
from collections.abc import Coroutine, Generator
from typing import Any, TypeVar, cast

__all__ = ["complete", "complete_in_task"]

T = TypeVar("T")


async def complete(work: Coroutine[Any, Any, T], keep: set[asyncio.Task[Any]]) -> T:
    """``await work``, except that cancelling the caller ends only its wait: ``work``
    runs to its end regardless. ``keep`` holds the task (if one is needed) until then.
    """
    try:
        # One step of the work, as the caller's own task would take it.
        waiting_on = work.send(None)
    except StopIteration as done:
        return cast(T, done.value)
    except BaseException:
        work.close()
        raise
    started: list[bool] = []
    task = asyncio.get_running_loop().create_task(_resume(work, waiting_on, started))

    def finished(task: asyncio.Task[T]) -> None:
        keep.discard(task)
        if not started:  # cancelled before its first step (the loop shutting down)
            work.close()

    keep.add(task)
    task.add_done_callback(finished)
    return await asyncio.shield(task)


async def complete_in_task(work: Coroutine[Any, Any, T], keep: set[asyncio.Task[Any]]) -> T:
    """:func:`complete`, always through a task of its own."""
    task = asyncio.get_running_loop().create_task(work)
    keep.add(task)
    task.add_done_callback(keep.discard)
    return await asyncio.shield(task)


async def _resume(work: Coroutine[Any, Any, T], waiting_on: Any, started: list[bool]) -> T:
    """Carry ``work`` on from where it suspended on ``waiting_on``, as asyncio's own task
    step does: wait for that future, then resume the work, which reads the future's
    outcome itself (its result, or its exception, raised where it was awaited)."""
    started.append(True)
    while True:
        try:
            if waiting_on is None:  # a bare yield: one turn of the loop
                await asyncio.sleep(0)
            else:
                await _outcome_of(waiting_on)
        except BaseException as exc:
            task = asyncio.current_task()
            if task is None or not task.cancelling():
                pass  # the future's own failure: the work reads it below
            else:
                # This task itself is cancelled (the loop is shutting down): the work
                # unwinds from where it stands, as under a task of its own.
                try:
                    waiting_on = work.throw(exc)
                except StopIteration as done:
                    return cast(T, done.value)
                continue
        try:
            waiting_on = work.send(None)
        except StopIteration as done:
            return cast(T, done.value)


@types.coroutine
def _outcome_of(future: Any) -> Generator[Any, None, None]:
    """Wait until ``future`` is done; its outcome is left for the work to read."""
    if not future.done():
        future._asyncio_future_blocking = True  # what Future.__await__ sets before yielding
        yield future
