"""complete(): awaiting a return that a cancellation must never cut short."""

from __future__ import annotations

import asyncio
import contextvars
import logging
from collections.abc import Coroutine
from typing import Any

import pytest

from poolwatch.adapters.completion import cancel_once, complete, complete_in_task

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


def _endless_work(cleaned: list[bool]) -> Coroutine[Any, Any, None]:
    """Work that never ends by itself and notes when it is unwound."""

    async def work() -> None:
        try:
            await asyncio.get_running_loop().create_future()
        finally:
            cleaned.append(True)

    return work()


async def test_shutting_the_work_task_down_unwinds_the_work() -> None:
    keep: set[asyncio.Task[Any]] = set()
    cleaned: list[bool] = []
    caller = asyncio.create_task(complete(_endless_work(cleaned), keep))
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
    caller = asyncio.create_task(complete(_endless_work(cleaned), keep))
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


async def test_cancel_once_passes_on_only_the_first_cancellation() -> None:
    """The caller ends cancelled, but only once the work has cleaned up undisturbed."""
    keep: set[asyncio.Task[Any]] = set()
    lock = asyncio.Lock()
    steps: list[str] = []

    async def acquire() -> str:
        try:
            await asyncio.sleep(10)  # waiting for a connection
        except asyncio.CancelledError:
            async with lock:  # the driver's clean-up, which must not be interrupted
                steps.append("cleaned up")
            raise
        return "connection"

    async def orphan(connection: str) -> None:
        steps.append(f"gave back {connection}")

    caller = asyncio.create_task(cancel_once(acquire(), keep, orphan))
    await asyncio.sleep(0)
    await lock.acquire()
    caller.cancel()
    await asyncio.sleep(0)
    caller.cancel()  # a second source of cancellation, during the clean-up
    await asyncio.sleep(0)
    assert not caller.done()
    lock.release()
    with pytest.raises(asyncio.CancelledError):
        await caller
    assert steps == ["cleaned up"]
    assert not keep


async def test_a_result_that_comes_after_the_cancellation_is_given_back() -> None:
    keep: set[asyncio.Task[Any]] = set()
    ready: asyncio.Future[str] = asyncio.get_running_loop().create_future()
    given_back: list[str] = []

    async def acquire() -> str:
        try:
            return await asyncio.shield(ready)
        except asyncio.CancelledError:  # a driver that hands over regardless
            return await ready

    async def orphan(connection: str) -> None:
        given_back.append(connection)

    caller = asyncio.create_task(cancel_once(acquire(), keep, orphan))
    await asyncio.sleep(0)
    caller.cancel()
    await asyncio.sleep(0)
    ready.set_result("connection 3")
    with pytest.raises(asyncio.CancelledError):
        await caller
    for _ in range(3):
        await asyncio.sleep(0)
    assert given_back == ["connection 3"]


async def test_cancel_once_hands_results_and_errors_through() -> None:
    keep: set[asyncio.Task[Any]] = set()

    async def orphan(connection: str) -> None:
        raise AssertionError("nothing to give back")

    async def slow() -> str:
        await asyncio.sleep(0.001)
        await asyncio.sleep(0)
        return "connection"

    async def failing() -> str:
        await asyncio.sleep(0.001)
        raise LookupError("pool closed")

    assert await cancel_once(slow(), keep, orphan) == "connection"
    with pytest.raises(LookupError, match="pool closed"):
        await cancel_once(failing(), keep, orphan)


async def test_cancel_once_under_a_timeout_is_a_timeout() -> None:
    keep: set[asyncio.Task[Any]] = set()

    async def orphan(connection: str) -> None:
        raise AssertionError("nothing to give back")

    async def waits() -> str:
        await asyncio.sleep(10)
        return "connection"

    with pytest.raises(TimeoutError):
        async with asyncio.timeout(0.01):
            await cancel_once(waits(), keep, orphan)


async def test_cancel_once_without_a_suspension_costs_no_task() -> None:
    keep: set[asyncio.Task[Any]] = set()

    async def acquire() -> str:
        return "connection"

    async def orphan(connection: str) -> None:
        raise AssertionError("nothing to give back")

    assert await cancel_once(acquire(), keep, orphan) == "connection"
    assert not keep


async def test_poolwatchs_own_task_that_fails_after_its_caller_left_is_not_reported_unretrieved(
    caplog: pytest.LogCaptureFixture,
) -> None:
    # The give-back of a connection nobody waits for any more may fail (the connection
    # died meanwhile): its task must not end in asyncio's "never retrieved" report.
    import gc

    from poolwatch.adapters.completion import keep_task

    keep: set[asyncio.Task[Any]] = set()

    async def fails() -> None:
        await asyncio.sleep(0)
        raise ConnectionError("unexpected connection_lost() call")

    with caplog.at_level(logging.ERROR, logger="asyncio"):
        task = asyncio.get_running_loop().create_task(fails())
        keep_task(task, keep)
        del task
        for _ in range(3):
            await asyncio.sleep(0)
        gc.collect()
    assert keep == set()
    assert not [r for r in caplog.records if "never retrieved" in r.getMessage()]
