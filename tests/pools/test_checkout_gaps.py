"""Which gaps of a checkout count as waiting (a held_idle finding), pure: the checkout
is driven with a fake clock and fake thread usage (CPU seconds, voluntary switches)."""

from __future__ import annotations

import pytest

from poolwatch.pools import observer
from poolwatch.pools.observer import HELD_IDLE_MIN, Checkout


class Thread:
    """The thread's usage, moved by the test."""

    def __init__(self, switches_known: bool = True) -> None:
        self.cpu = 0.0
        self.switches = 0 if switches_known else -1

    def __call__(self) -> tuple[float, int]:
        return self.cpu, self.switches

    def block(self) -> None:
        if self.switches >= 0:
            self.switches += 1


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> list[float]:
    now = [100.0]
    monkeypatch.setattr(observer, "perf_counter", lambda: now[0])
    return now


def _statement(checkout: Checkout, clock: list[float], thread: Thread, path: str) -> None:
    checkout.starting()
    thread.block()  # the statement's own wait for the database
    clock[0] += 0.001
    checkout.ran(0.001, path)


def test_a_gap_the_thread_spent_blocked_is_the_longest_wait_with_its_two_lines(
    clock: list[float],
) -> None:
    thread = Thread()
    checkout = Checkout(clock[0], "/orders", thread, None)
    _statement(checkout, clock, thread, "app.py:10 in create")
    clock[0] += 0.3  # an outbound call: the event loop had nothing to run
    thread.block()
    thread.cpu += 0.002
    _statement(checkout, clock, thread, "app.py:12 in create")
    assert checkout.gap == pytest.approx(0.3)
    assert (checkout.before, checkout.after) == ("app.py:10 in create", "app.py:12 in create")


def test_cpu_work_between_statements_is_no_wait_however_long(clock: list[float]) -> None:
    thread = Thread()
    checkout = Checkout(clock[0], "/reports", thread, None)
    _statement(checkout, clock, thread, "app.py:10 in report")
    clock[0] += 0.25  # computing, preempted half the time on a loaded machine: no block
    thread.cpu += 0.125
    _statement(checkout, clock, thread, "app.py:14 in report")
    assert checkout.gap == 0.0


def test_a_gap_with_a_block_but_mostly_on_the_cpu_is_no_wait(clock: list[float]) -> None:
    thread = Thread()
    checkout = Checkout(clock[0], "/reports", thread, None)
    _statement(checkout, clock, thread, "app.py:10 in report")
    clock[0] += 0.2
    thread.block()  # one short read of a file, in 200 ms of computing
    thread.cpu += 0.19
    _statement(checkout, clock, thread, "app.py:14 in report")
    assert checkout.gap == 0.0


def test_without_switch_counts_the_cpu_share_alone_decides(clock: list[float]) -> None:
    thread = Thread(switches_known=False)
    checkout = Checkout(clock[0], "/orders", thread, None)
    _statement(checkout, clock, thread, "app.py:10 in create")
    clock[0] += 0.3
    _statement(checkout, clock, thread, "app.py:12 in create")
    assert checkout.gap == pytest.approx(0.3)


def test_the_wait_until_the_release_has_no_line_after(clock: list[float]) -> None:
    thread = Thread()
    checkout = Checkout(clock[0], "/orders", thread, None)
    _statement(checkout, clock, thread, "app.py:10 in create")
    clock[0] += 0.5
    thread.block()
    checkout.ended(clock[0])
    assert checkout.gap == pytest.approx(0.5)
    assert (checkout.before, checkout.after) == ("app.py:10 in create", "")


def test_short_gaps_are_never_sampled(clock: list[float]) -> None:
    calls = []
    thread = Thread()

    def usage() -> tuple[float, int]:
        calls.append(clock[0])
        return thread()

    checkout = Checkout(clock[0], "/orders", usage, None)
    for line in range(5):
        clock[0] += HELD_IDLE_MIN / 10
        _statement(checkout, clock, thread, f"app.py:{line} in f")
    # One sample at the checkout and one after each statement; none before them.
    assert len(calls) == 1 + 5
    assert checkout.gap == 0.0


def test_a_gap_that_began_in_another_thread_is_not_judged(
    clock: list[float], monkeypatch: pytest.MonkeyPatch
) -> None:
    # A FastAPI sync dependency runs its statement in one worker thread, the sync endpoint
    # its own in another, and the teardown gives the connection back from a third: the
    # usage of one thread says nothing of the time since a statement in another.
    thread = Thread()
    ident = [1]
    monkeypatch.setattr(observer, "get_ident", lambda: ident[0])
    checkout = Checkout(clock[0], "/items/{id}", thread, None)
    _statement(checkout, clock, thread, "deps.py:41 in get_current_user")
    clock[0] += 0.3  # the endpoint's turn in the thread pool
    thread.block()
    ident[0] = 2
    _statement(checkout, clock, thread, "items.py:30 in read_item")
    assert checkout.gap == 0.0
    clock[0] += 0.2  # an outbound call in the endpoint: judged, in its own thread
    thread.block()
    _statement(checkout, clock, thread, "items.py:32 in read_item")
    assert checkout.gap == pytest.approx(0.2)
    clock[0] += 0.4  # the response sent, then the teardown's turn
    thread.block()
    ident[0] = 3
    checkout.ended(clock[0])
    assert checkout.gap == pytest.approx(0.2)
    assert (checkout.before, checkout.after) == (
        "items.py:30 in read_item",
        "items.py:32 in read_item",
    )
