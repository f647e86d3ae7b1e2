"""WaitDeadline: asyncio.timeout for a wait that ends in a hand-over."""

from __future__ import annotations

import asyncio

import pytest

from poolwatch.sizing.deadline import WaitDeadline


async def test_it_expires_while_the_wait_is_not_over() -> None:
    deadline = WaitDeadline(0.01, lambda: False)
    with pytest.raises(TimeoutError):
        async with deadline:
            await asyncio.sleep(1)
    assert deadline.expired
    task = asyncio.current_task()
    assert task is not None
    assert task.cancelling() == 0  # its own cancel request was taken back


async def test_once_settled_the_rest_runs_in_full() -> None:
    settled = False
    deadline = WaitDeadline(0.01, lambda: settled)
    async with deadline:
        settled = True  # the hand-over happened; what follows takes longer than the deadline
        await asyncio.sleep(0.05)
    assert not deadline.expired


async def test_an_outer_cancellation_is_not_turned_into_a_timeout() -> None:
    entered = asyncio.Event()

    async def wait() -> None:
        async with WaitDeadline(10, lambda: False):
            entered.set()
            await asyncio.sleep(10)

    task = asyncio.create_task(wait())
    await entered.wait()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task


async def test_an_outer_timeout_that_fires_first_stays_the_outer_ones() -> None:
    deadline = WaitDeadline(10, lambda: False)

    async def wait() -> None:
        async with asyncio.timeout(0.01), deadline:
            await asyncio.sleep(1)

    with pytest.raises(TimeoutError):
        await wait()
    assert not deadline.expired


async def test_a_cancellation_racing_the_deadline_is_kept() -> None:
    """The deadline fired, but the task was also cancelled from outside meanwhile: the
    cancellation must reach the caller, not become a TimeoutError."""
    started = asyncio.Event()

    async def wait() -> None:
        async with WaitDeadline(0.01, lambda: False):
            started.set()
            try:
                await asyncio.sleep(1)
            except asyncio.CancelledError:
                asyncio.current_task().cancel()  # type: ignore[union-attr]  # a second request
                raise

    task = asyncio.create_task(wait())
    await started.wait()
    with pytest.raises(asyncio.CancelledError):
        await task


async def test_nothing_happens_when_the_block_finishes_in_time() -> None:
    deadline = WaitDeadline(0.05, lambda: False)
    async with deadline:
        await asyncio.sleep(0)
    await asyncio.sleep(0.08)  # the timer was cancelled with the block
    assert not deadline.expired


async def test_it_adds_no_cancellation_to_a_task_already_being_cancelled() -> None:
    """A driver cleaning up after one cancellation must not be interrupted by a second."""
    deadline = WaitDeadline(0.01, lambda: False)
    cleaned: list[bool] = []

    async def wait() -> None:
        async with deadline:
            try:
                await asyncio.sleep(1)
            except asyncio.CancelledError:
                await asyncio.sleep(0.03)  # the clean-up outlives the deadline
                cleaned.append(True)
                raise

    task = asyncio.create_task(wait())
    await asyncio.sleep(0)
    task.cancel()  # someone else's cancellation comes first
    with pytest.raises(asyncio.CancelledError):
        await task
    assert cleaned == [True]
    assert not deadline.expired
