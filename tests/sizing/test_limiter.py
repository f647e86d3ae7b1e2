"""The resizable limiter: permits never leak, resizes take effect at once."""

from __future__ import annotations

import asyncio
import random
import threading
import time
from typing import Any

import pytest

from poolwatch.sizing.limiter import AsyncLimiter, ThreadLimiter


async def test_grow_wakes_waiters_at_once_and_shrink_interrupts_nobody() -> None:
    limiter = AsyncLimiter(2)
    await limiter.acquire()
    await limiter.acquire()
    waiters = [asyncio.create_task(limiter.acquire()) for _ in range(3)]
    await asyncio.sleep(0)
    assert (limiter.in_use, limiter.waiting) == (2, 3)

    limiter.set_limit(4)
    await asyncio.sleep(0)
    assert (limiter.in_use, limiter.waiting) == (4, 1)

    limiter.set_limit(1)  # four permits stay out; none is handed out until below 1
    limiter.release()
    limiter.release()
    await asyncio.sleep(0)
    assert (limiter.in_use, limiter.waiting) == (2, 1)
    limiter.release()
    limiter.release()
    await asyncio.sleep(0)
    assert (limiter.in_use, limiter.waiting) == (1, 0)
    await asyncio.gather(*waiters)


async def test_waiters_are_served_in_order() -> None:
    limiter = AsyncLimiter(1)
    await limiter.acquire()
    served: list[int] = []

    async def take(index: int) -> None:
        await limiter.acquire()
        served.append(index)
        limiter.release()

    tasks = [asyncio.create_task(take(i)) for i in range(5)]
    await asyncio.sleep(0)
    limiter.release()
    await asyncio.gather(*tasks)
    assert served == [0, 1, 2, 3, 4]
    assert limiter.in_use == 0


async def test_a_timed_out_waiter_keeps_no_permit() -> None:
    limiter = AsyncLimiter(1)
    await limiter.acquire()
    with pytest.raises(TimeoutError):
        async with asyncio.timeout(0.01):
            await limiter.acquire()
    assert (limiter.in_use, limiter.waiting) == (1, 0)
    limiter.release()
    await limiter.acquire()  # the permit is there for the next one
    assert limiter.in_use == 1


async def test_granted_then_cancelled_in_the_same_instant_passes_the_permit_on() -> None:
    limiter = AsyncLimiter(1)
    await limiter.acquire()
    first = asyncio.create_task(limiter.acquire())
    second = asyncio.create_task(limiter.acquire())
    await asyncio.sleep(0)
    limiter.release()  # grants `first` ...
    first.cancel()  # ... which is cancelled before it runs again
    with pytest.raises(asyncio.CancelledError):
        await first
    await second  # the permit went to `second`
    assert (limiter.in_use, limiter.waiting) == (1, 0)


async def test_random_cancellations_and_resizes_leak_nothing() -> None:
    rng = random.Random(7)
    limiter = AsyncLimiter(3)
    peak = 0

    async def worker() -> None:
        nonlocal peak
        for _ in range(30):
            try:
                async with asyncio.timeout(rng.choice((0.0005, 0.002, 0.01))):
                    await limiter.acquire()
            except TimeoutError:
                continue
            try:
                peak = max(peak, limiter.in_use)
                await asyncio.sleep(rng.random() / 1000)
            finally:
                limiter.release()

    async def resizer() -> None:
        for _ in range(40):
            limiter.set_limit(rng.randint(1, 8))
            await asyncio.sleep(0.001)

    tasks = [asyncio.create_task(worker()) for _ in range(20)]
    victims = tasks[:5]
    await asyncio.sleep(0.003)
    for task in victims:
        task.cancel()
    await asyncio.gather(resizer(), *tasks, return_exceptions=True)
    assert (limiter.in_use, limiter.waiting) == (0, 0)
    assert 1 <= peak <= 8


def test_release_without_acquire_is_an_error() -> None:
    with pytest.raises(RuntimeError):
        AsyncLimiter(1).release()
    with pytest.raises(RuntimeError):
        ThreadLimiter(1).release()


@pytest.mark.parametrize("bad", [0, -1, 1.5, True, "3"])
def test_bad_limits_are_refused(bad: object) -> None:
    with pytest.raises(ValueError, match="limit"):
        AsyncLimiter(bad)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="limit"):
        ThreadLimiter(2).set_limit(bad)  # type: ignore[arg-type]


def test_thread_limiter_bounds_concurrency_and_times_out() -> None:
    limiter = ThreadLimiter(3)
    lock = threading.Lock()
    running = peak = 0
    timeouts = 0

    def worker() -> None:
        nonlocal running, peak, timeouts
        for _ in range(50):
            if not limiter.acquire(timeout=0.05):
                with lock:
                    timeouts += 1
                continue
            with lock:
                running += 1
                peak = max(peak, running)
            time.sleep(0.0005)
            with lock:
                running -= 1
            limiter.release()

    threads = [threading.Thread(target=worker) for _ in range(10)]
    for thread in threads:
        thread.start()
    limiter.set_limit(5)
    for thread in threads:
        thread.join()
    assert peak <= 5
    assert (limiter.in_use, limiter.waiting) == (0, 0)


def test_thread_limiter_grow_wakes_a_blocked_thread() -> None:
    limiter = ThreadLimiter(1)
    assert limiter.acquire()
    got: list[bool] = []
    thread = threading.Thread(target=lambda: got.append(limiter.acquire(timeout=5)))
    thread.start()
    while limiter.waiting == 0:
        time.sleep(0.001)
    limiter.set_limit(2)
    thread.join(timeout=5)
    assert got == [True]
    assert limiter.in_use == 2
    assert not limiter.acquire(timeout=0.01)


def _until(condition: Any) -> None:
    """Wait for ``condition()`` (a test that fails, fails in 30 s rather than hanging)."""
    deadline = time.monotonic() + 30
    while not condition():
        assert time.monotonic() < deadline, "the condition never held"
        time.sleep(0.001)


def _queue_up(
    limiter: ThreadLimiter, count: int, got: list[int], **kwargs: Any
) -> list[threading.Thread]:
    """Start ``count`` threads that wait for a permit one after another, in order."""
    threads = []
    for index in range(count):
        thread = threading.Thread(
            target=lambda i=index: got.append(i) if limiter.acquire(**kwargs) else None
        )
        thread.start()
        threads.append(thread)
        _until(lambda i=index: limiter.waiting >= i + 1)  # queued before the next starts
    return threads


def test_thread_limiter_serves_waiters_first_come_first_served() -> None:
    # A permit that comes back goes to the thread that waited longest, never to one that
    # arrived later (nor to one that barges in as it comes back).
    limiter = ThreadLimiter(1)
    assert limiter.acquire()
    got: list[int] = []
    threads = _queue_up(limiter, 5, got, timeout=30)
    for served in range(5):
        limiter.release()
        _until(lambda n=served: len(got) >= n + 1)
        assert not limiter.acquire(timeout=0)  # a newcomer does not jump the queue
    for thread in threads:
        thread.join()
    assert got == [0, 1, 2, 3, 4]
    assert (limiter.in_use, limiter.waiting) == (1, 0)


def test_thread_limiter_puts_poolwatchs_own_acquire_first() -> None:
    limiter = ThreadLimiter(1)
    assert limiter.acquire()
    got: list[int] = []
    threads = _queue_up(limiter, 3, got, timeout=30)
    own: list[bool] = []
    first = threading.Thread(target=lambda: own.append(limiter.acquire(first=True)))
    first.start()
    _until(lambda: limiter.waiting >= 4)
    limiter.release()
    first.join(30)
    assert own == [True]
    assert got == []  # the three that came earlier still wait
    limiter.set_limit(4)
    for thread in threads:
        thread.join()
    assert sorted(got) == [0, 1, 2]
    assert (limiter.in_use, limiter.waiting) == (4, 0)


def test_a_thread_granted_as_its_wait_runs_out_keeps_the_permit() -> None:
    # Whichever way the race between the grant and the timeout goes, the permit is
    # either kept by the waiter or left for the next one: never lost.
    limiter = ThreadLimiter(1)
    for _ in range(200):
        assert limiter.acquire()
        outcome: list[bool] = []

        def wait(into: list[bool] = outcome) -> None:
            into.append(limiter.acquire(timeout=0.0005))

        thread = threading.Thread(target=wait)
        thread.start()
        limiter.release()
        thread.join()
        if outcome == [True]:
            limiter.release()
        assert (limiter.in_use, limiter.waiting) == (0, 0)


def test_a_limiter_forgets_the_parents_permits_after_fork() -> None:
    limiter = ThreadLimiter(2)
    assert limiter.acquire()
    limiter.after_fork()
    assert (limiter.in_use, limiter.waiting) == (0, 0)
    assert limiter.acquire(timeout=0)
    assert limiter.acquire(timeout=0)
    assert not limiter.acquire(timeout=0)
