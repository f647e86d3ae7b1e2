"""complete(): awaiting a return that a cancellation must never cut short."""

from __future__ import annotations

import asyncio
import contextvars
from typing import Any

import pytest

from poolwatch.completion import complete, complete_in_task

request_id: contextvars.ContextVar[str] = contextvars.ContextVar("request_id", default="-")


async def test_work_that_never_suspends_costs_no_task() -> None:
    keep: set[asyncio.Task[Any]] = set()

    async def work() -> int:
        return 42

    created = len(asyncio.all_tasks())
    assert await complete(work(), keep) == 42
    assert not keep
    assert len(asyncio.all_tasks()) == created


async def test_a_cancelled_caller_stops_waiting_but_the_work_finishes() -> None:
    keep: set[asyncio.Task[Any]] = set()
    lock = asyncio.Lock()
    finished: list[str] = []

    async def give_back() -> None:
        async with lock:  # contended: this is where a plain await would be cut short
            finished.append(request_id.get())

    async def caller() -> None:
        request_id.set("req-7")
        await complete(give_back(), keep)

    await lock.acquire()
    task = asyncio.create_task(caller())
    await asyncio.sleep(0)
    await asyncio.sleep(0)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert finished == []
    lock.release()
    for _ in range(5):
        await asyncio.sleep(0)
    assert finished == ["req-7"]  # and in the caller's context
    assert not keep


async def test_results_and_errors_after_a_suspension_reach_the_caller() -> None:
    keep: set[asyncio.Task[Any]] = set()

    async def slow(value: int) -> int:
        await asyncio.sleep(0.001)
        return value

    async def failing() -> None:
        await asyncio.sleep(0.001)
        raise LookupError("gone")

    assert await complete(slow(5), keep) == 5
    with pytest.raises(LookupError, match="gone"):
        await complete(failing(), keep)


async def test_the_work_reads_what_it_awaited_itself() -> None:
    """A future that fails is raised inside the work, where it was awaited."""
    keep: set[asyncio.Task[Any]] = set()
    future: asyncio.Future[int] = asyncio.get_running_loop().create_future()

    async def work() -> str:
        try:
            await future
        except KeyError as exc:
            return f"handled {exc}"
        return "not reached"

    waiter = asyncio.create_task(complete(work(), keep))
    await asyncio.sleep(0)
    future.set_exception(KeyError("k"))
    assert await waiter == "handled 'k'"


async def test_sleep_zero_inside_the_work_is_one_loop_turn() -> None:
    keep: set[asyncio.Task[Any]] = set()

    async def work() -> int:
        for _ in range(3):
            await asyncio.sleep(0)
        return 3

    assert await complete(work(), keep) == 3


async def test_shutting_the_work_task_down_unwinds_the_work() -> None:
    keep: set[asyncio.Task[Any]] = set()
    cleaned: list[bool] = []
    never: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    async def work() -> None:
        try:
            await never
        finally:
            cleaned.append(True)

    caller = asyncio.create_task(complete(work(), keep))
    await asyncio.sleep(0)
    await asyncio.sleep(0)  # the task has taken its first step
    (task,) = keep
    task.cancel()  # what asyncio.run does to leftover tasks
    with pytest.raises(asyncio.CancelledError):
        await task
    assert cleaned == [True]
    caller.cancel()
    await asyncio.gather(caller, return_exceptions=True)


async def test_a_task_shut_down_before_its_first_step_closes_the_work() -> None:
    keep: set[asyncio.Task[Any]] = set()
    cleaned: list[bool] = []
    never: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    async def work() -> None:
        try:
            await never
        finally:
            cleaned.append(True)

    caller = asyncio.create_task(complete(work(), keep))
    await asyncio.sleep(0)
    (task,) = keep
    task.cancel()
    await asyncio.gather(task, caller, return_exceptions=True)
    assert cleaned == [True]


async def test_complete_in_task_always_uses_a_task() -> None:
    keep: set[asyncio.Task[Any]] = set()

    async def work() -> int:
        return 1

    assert await complete_in_task(work(), keep) == 1
