"""Awaiting driver work that a cancellation must not cut short, or must reach only once.

A caller cancelled while it waits for a connection's return must only stop *waiting*: the
return itself has to finish, or the pool loses the connection. A caller cancelled while
it waits for a connection must stop the wait once, and then let the driver clean up:
psycopg_pool, cancelled, gives back a connection it was checking, and a second
cancellation during that give-back drops the connection (the pool goes on counting it).
Two cancellations are common: a client that gives up, and a deadline.

``asyncio.shield`` runs the work in a task per call, and a task costs two or three
event-loop turns: on Tortoise over psycopg, 8-9% of the throughput of a loop of
primary-key reads, although almost every return finishes without suspending. So both
functions here run the work inline, and only hand it to a task of its own at its first
real suspension: the common case costs nothing.
"""

from __future__ import annotations

import asyncio
import functools
import types
from collections.abc import Callable, Coroutine, Generator
from typing import Any, Generic, TypeVar, cast

__all__ = ["cancel_once", "complete", "complete_in_task", "keep_task"]

T = TypeVar("T")

Tasks = set[asyncio.Task[Any]]


async def complete(work: Coroutine[Any, Any, T], keep: Tasks) -> T:
    """``await work``, except that cancelling the caller ends only its wait: ``work``
    runs to its end regardless. ``keep`` holds the task (if one is needed) until then."""
    task = _start(work, keep)
    if not isinstance(task, asyncio.Task):
        return task.value
    return await asyncio.shield(task)


async def cancel_once(
    work: Coroutine[Any, Any, T],
    keep: Tasks,
    orphan: Callable[[T], Coroutine[Any, Any, Any]],
) -> T:
    """``await work`` (an acquire), passing on at most one cancellation of the caller.

    The first cancellation of the caller reaches ``work`` as usual; any later one waits
    until ``work`` has cleaned up (psycopg_pool gives back the connection it was
    checking), and the caller then ends cancelled. Should ``work`` produce a result after
    all, nobody will use it: ``orphan(result)`` gives it back.

    It runs in the caller's own task, as a plain ``await`` would, until the cancellation
    comes: only then, for the clean-up, does it stand a future of its own between the
    task and each one ``work`` waits on, which a further cancellation cancels instead.
    """
    return await _CancelOnce(work, keep, orphan)


class _CancelOnce(Generic[T]):
    __slots__ = ("_keep", "_orphan", "_work")

    def __init__(
        self,
        work: Coroutine[Any, Any, T],
        keep: Tasks,
        orphan: Callable[[T], Coroutine[Any, Any, Any]],
    ) -> None:
        self._work = work
        self._keep = keep
        self._orphan = orphan

    def __await__(self) -> Generator[Any, None, T]:
        work = self._work
        passed_on = False  # the one cancellation has reached the work
        step: Callable[[], Any] = functools.partial(work.send, None)
        while True:
            try:
                waiting_on = step()
            except StopIteration as done:
                if passed_on:  # the work finished after all; the caller is cancelled
                    self._give_back(cast(T, done.value))
                    raise asyncio.CancelledError from None
                return cast(T, done.value)
            if not passed_on:
                # The task waits on the work's own future, as under a plain await: no cost.
                try:
                    yield waiting_on
                except BaseException as exc:
                    passed_on = isinstance(exc, asyncio.CancelledError)
                    step = functools.partial(work.throw, exc)
                else:
                    step = functools.partial(work.send, None)
                continue
            # The work is cleaning up after the one cancellation: from here the task waits
            # on a stand-in, which any further cancellation cancels instead.
            while True:
                try:
                    yield _stand_in(waiting_on)
                except asyncio.CancelledError:
                    continue  # swallowed: the caller ends cancelled anyway
                except BaseException as exc:
                    step = functools.partial(work.throw, exc)
                else:
                    step = functools.partial(work.send, None)
                break

    def _give_back(self, result: T) -> None:
        keep_task(asyncio.get_running_loop().create_task(self._orphan(result)), self._keep)


def _stand_in(waiting_on: Any) -> asyncio.Future[None]:
    """A future that completes when ``waiting_on`` does (one loop turn later)."""
    loop = asyncio.get_running_loop()
    stand_in: asyncio.Future[None] = loop.create_future()
    if waiting_on is None:  # a bare yield: one turn of the loop
        loop.call_soon(_settle, stand_in)
    elif waiting_on.done():
        stand_in.set_result(None)
    else:
        waiting_on.add_done_callback(lambda _: _settle(stand_in))
    stand_in._asyncio_future_blocking = True  # what Future.__await__ sets before yielding
    return stand_in


def _settle(stand_in: asyncio.Future[None]) -> None:
    if not stand_in.done():
        stand_in.set_result(None)


async def complete_in_task(work: Coroutine[Any, Any, T], keep: Tasks) -> T:
    """:func:`complete` through a task of its own from the start (for rare paths)."""
    task = asyncio.get_running_loop().create_task(work)
    keep_task(task, keep)
    return await asyncio.shield(task)


def keep_task(task: asyncio.Task[Any], keep: Tasks) -> None:
    """Hold ``task`` in ``keep`` until it ends (the loop keeps only weak references), then
    retrieve its outcome: poolwatch's own task, which nobody may await any more (its caller
    was cancelled), must never end in asyncio's "exception was never retrieved"."""
    keep.add(task)

    def finished(done: asyncio.Task[Any]) -> None:
        keep.discard(done)
        _retrieve(done)

    task.add_done_callback(finished)


def _retrieve(task: asyncio.Task[Any]) -> None:
    # Whoever awaits the task still gets its exception; this only marks it as seen.
    if not task.cancelled():
        task.exception()


class _Done(Generic[T]):
    """The result of work that finished in its first step."""

    __slots__ = ("value",)

    def __init__(self, value: T) -> None:
        self.value = value


def _start(work: Coroutine[Any, Any, T], keep: Tasks) -> asyncio.Task[T] | _Done[T]:
    """Take the first step of ``work`` here; if it suspends, carry on in a task."""
    try:
        waiting_on = work.send(None)  # the step the caller's own task would take
    except StopIteration as done:
        return _Done(cast(T, done.value))
    started: list[bool] = []
    task = asyncio.get_running_loop().create_task(_resume(work, waiting_on, started))

    def finished(task: asyncio.Task[T]) -> None:
        keep.discard(task)
        _retrieve(task)
        if not started:  # cancelled before its first step (the loop shutting down)
            work.close()

    keep.add(task)
    task.add_done_callback(finished)
    return task


async def _resume(work: Coroutine[Any, Any, T], waiting_on: Any, started: list[bool]) -> T:
    """Carry ``work`` on from where it suspended on ``waiting_on``, as asyncio's own task
    step does: wait for that future, then resume the work where it awaited it, with the
    future's outcome (or this task's own cancellation) raised there."""
    started.append(True)
    while True:
        try:
            if waiting_on is None:  # a bare yield: one turn of the loop
                await asyncio.sleep(0)
            else:
                await _outcome_of(waiting_on)
        except BaseException as exc:
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
def _outcome_of(future: Any) -> Generator[Any, None, Any]:
    """Wait until ``future`` is done (raising its exception, as awaiting it would)."""
    if not future.done():
        future._asyncio_future_blocking = True  # what Future.__await__ sets before yielding
        yield future
    return future.result()
