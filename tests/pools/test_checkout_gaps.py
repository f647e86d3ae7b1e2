"""Which gaps of a checkout count as waiting (a held_idle finding), pure: the checkout
is driven with a fake clock, fake thread usage (CPU seconds, voluntary switches) and a
fake reader of the code between two statements."""

from __future__ import annotations

import pytest

from poolwatch.pools import checkout as checkouts
from poolwatch.pools.checkout import HELD_IDLE_MIN, Checkout
from poolwatch.pools.waits import NOTHING, SLEEP, THREAD, UNKNOWN, Reading, Wait


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
    monkeypatch.setattr(checkouts, "perf_counter", lambda: now[0])
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
    checkout.ended(clock[0], lambda: "app.py:13 in create")
    assert checkout.gap == pytest.approx(0.5)
    assert (checkout.before, checkout.after) == ("app.py:10 in create", "")


def test_short_gaps_are_never_sampled(clock: list[float]) -> None:
    calls = []
    thread = Thread()

    def usage() -> tuple[float, int]:
        calls.append(1)
        return thread()

    checkout = Checkout(clock[0], "/orders", usage, None)
    for line in range(5):
        clock[0] += HELD_IDLE_MIN / 2
        _statement(checkout, clock, thread, f"app.py:{line} in f")
    # One sample at the checkout and one after each statement; none before them.
    assert len(calls) == 1 + 5
    assert checkout.gap == 0.0
    clock[0] += HELD_IDLE_MIN * 1.5
    _statement(checkout, clock, thread, "app.py:9 in f")
    assert len(calls) == 1 + 5 + 2


# -- what the code between two statements waits on ----------------------------------------


class Reader:
    """What the code between two call paths waits on, as the test says (unknown unless
    told), and what the code after a statement until its functions return waits on."""

    def __init__(
        self,
        waits: dict[tuple[str, str], Reading],
        rests: dict[str, Reading] | None = None,
    ) -> None:
        self.waits = waits
        self.rests = rests or {}
        self.asked: list[tuple[str, str]] = []

    def between(self, before: str, after: str) -> Reading:
        self.asked.append((before, after))
        return self.waits.get((before, after), UNKNOWN)

    def after(self, before: str) -> Reading:
        return self.rests.get(before, UNKNOWN)


def _read(checkout: Checkout, reader: Reader, taken: str = "") -> Checkout:
    checkout.reading(reader, taken)
    return checkout


HASH = Wait(THREAD, "verify_password", "run_in_threadpool")
LOGIN = ("auth.py:20 in login", "auth.py:24 in login")


def _gap(
    reader: Reader, clock: list[float], thread: Thread, gap: float, *, block: bool
) -> Checkout:
    """A checkout with two statements, the login's, and ``gap`` seconds between them."""
    checkout = _read(Checkout(clock[0], "/login", thread, None), reader)
    _statement(checkout, clock, thread, LOGIN[0])
    clock[0] += gap
    thread.cpu += gap / 100
    if block:
        thread.block()
    _statement(checkout, clock, thread, LOGIN[1])
    return checkout


@pytest.mark.parametrize("gap", [0.0002, 0.002, 0.08, 0.099, 0.1, 0.101, 0.3, 2.0])
def test_a_wait_the_code_names_is_a_finding_whatever_its_length(
    clock: list[float], gap: float
) -> None:
    """A password hash sent to the thread pool takes 80 ms on one run and 120 on the next:
    the verdict is the same, as it is the code's, not the clock's."""
    checkout = _gap(Reader({LOGIN: Reading(HASH, True)}), clock, Thread(), gap, block=True)
    assert checkout.known == HASH
    assert (checkout.known_before, checkout.known_after) == LOGIN
    held = gap + 0.05  # whatever share of the hold the statements took
    assert checkout.held_idle(held=held, idle=gap)


def test_a_certain_wait_counts_even_where_the_thread_did_not_block(clock: list[float]) -> None:
    # An event loop kept busy by other requests may never block while the hash runs.
    checkout = _gap(Reader({LOGIN: Reading(HASH, True)}), clock, Thread(), 0.05, block=False)
    assert checkout.known == HASH


def test_a_wait_on_some_paths_only_is_named_as_such_whether_it_ran_or_not(
    clock: list[float],
) -> None:
    # `if user is None or not await run_in_threadpool(...)`, then the release: for an
    # unknown user the hash never ran, for a wrong password it did. The thread cannot
    # tell (a driver's thread taking the GIL blocks it too): the code's verdict stands.
    maybe = HASH._replace(certain=False)
    for block in (False, True):
        checkout = _gap(Reader({LOGIN: Reading(maybe, True)}), clock, Thread(), 0.002, block=block)
        assert checkout.known == maybe
        assert checkout.held_idle(held=0.003, idle=0.002)
    assert str(maybe) == (
        "verify_password, run in the thread pool by run_in_threadpool (on some paths only)"
    )


def test_code_that_waits_on_nothing_is_no_finding_however_long(clock: list[float]) -> None:
    # The same SELECT row by row, nothing but CPU work between: a loaded machine made one
    # gap 226 ms, and the thread blocked in it (another thread held the GIL).
    checkout = _gap(Reader({LOGIN: NOTHING}), clock, Thread(), 0.226, block=True)
    assert checkout.known is None
    assert checkout.gap == 0.0
    assert not checkout.held_idle(held=0.25, idle=0.226)


def test_code_that_cannot_be_read_falls_back_on_the_measurement(clock: list[float]) -> None:
    checkout = _gap(Reader({}), clock, Thread(), 0.3, block=True)
    assert checkout.known is None
    assert checkout.gap == pytest.approx(0.3)
    assert (checkout.before, checkout.after) == LOGIN
    assert checkout.held_idle(held=0.31, idle=0.3)


def test_a_wait_until_the_release_is_read_with_the_releasing_line(clock: list[float]) -> None:
    thread = Thread()
    nap = Wait(SLEEP, "asyncio.sleep")
    reader = Reader(
        {("app.py:10 in create", "app.py:8 in create"): Reading(nap, True)},
        {"app.py:10 in create": Reading(nap, True)},
    )
    checkout = _read(Checkout(clock[0], "/orders", thread, None), reader)
    _statement(checkout, clock, thread, "app.py:10 in create")
    clock[0] += 0.02
    thread.block()
    released = []

    def release() -> str:
        released.append(1)
        return "app.py:8 in create"  # the `async with` whose exit gave the connection back

    checkout.ended(clock[0], release)
    assert released == [1]
    assert checkout.known == nap
    assert checkout.known_after == "app.py:8 in create"
    assert checkout.held_idle(held=0.025, idle=0.02)


def test_the_release_is_not_looked_for_when_nothing_after_waits(clock: list[float]) -> None:
    thread = Thread()
    reader = Reader({}, {"app.py:10 in create": NOTHING})
    checkout = _read(Checkout(clock[0], "/orders", thread, None), reader)
    _statement(checkout, clock, thread, "app.py:10 in create")
    clock[0] += 0.5
    thread.block()

    def release() -> str:
        raise AssertionError("no stack walk for a checkout whose code waits on nothing")

    checkout.ended(clock[0], release)
    assert checkout.known is None
    assert not checkout.held_idle(held=0.51, idle=0.5)


def test_a_rollback_before_the_release_is_no_measured_wait(clock: list[float]) -> None:
    # A 401 after the SELECT: the session's ROLLBACK, a slow round trip, then the release.
    thread = Thread()
    checkout = _read(Checkout(clock[0], "/login", thread, None), Reader({}))
    _statement(checkout, clock, thread, LOGIN[0])
    clock[0] += 0.002
    checkout.busy(True)
    clock[0] += 0.3
    thread.block()
    checkout.busy(False)
    checkout.ended(clock[0], lambda: "deps.py:5 in get_session")
    assert checkout.gap == 0.0
    assert not checkout.held_idle(held=0.31, idle=0.3)


def test_a_commit_between_statements_is_no_measured_wait(clock: list[float]) -> None:
    thread = Thread()
    checkout = _read(Checkout(clock[0], "/orders", thread, None), Reader({}))
    _statement(checkout, clock, thread, "app.py:10 in create")
    checkout.busy(True)
    clock[0] += 0.3  # a slow COMMIT
    thread.block()
    checkout.busy(False)
    clock[0] += 0.01
    _statement(checkout, clock, thread, "app.py:12 in create")
    assert checkout.gap == 0.0


def test_a_known_wait_is_named_before_a_longer_measured_one(clock: list[float]) -> None:
    thread = Thread()
    reader = Reader({("app.py:10 in f", "app.py:12 in f"): Reading(HASH, True)})
    checkout = _read(Checkout(clock[0], "/orders", thread, None), reader)
    _statement(checkout, clock, thread, "app.py:10 in f")
    clock[0] += 0.05
    thread.block()
    _statement(checkout, clock, thread, "app.py:12 in f")
    clock[0] += 0.4  # longer, and the code between cannot be read
    thread.block()
    _statement(checkout, clock, thread, "app.py:14 in f")
    assert checkout.gap == pytest.approx(0.4)
    assert checkout.known == HASH
    assert checkout.known_before == "app.py:10 in f"


def test_the_code_from_the_checkout_to_the_first_statement_is_read(clock: list[float]) -> None:
    # `async with engine.connect() as conn:` at line 8, an outbound call, a statement.
    thread = Thread()
    call = Wait("network", "httpx.AsyncClient.get")
    reader = Reader({("app.py:8 in create", "app.py:10 in create"): Reading(call, True)})
    checkout = _read(Checkout(clock[0], "/orders", thread, None), reader, "app.py:8 in create")
    clock[0] += 0.01
    thread.block()
    _statement(checkout, clock, thread, "app.py:10 in create")
    assert checkout.known == call
    assert checkout.known_before == "app.py:8 in create"


def test_a_statement_that_took_its_own_connection_has_nothing_before_it(
    clock: list[float],
) -> None:
    # A session's first statement checks the connection out itself (autobegin): the
    # first gap is the ORM's and the driver's own (a first connection's set-up blocks).
    thread = Thread()
    reader = Reader({})
    checkout = _read(Checkout(clock[0], "/orders", thread, None), reader, "app.py:10 in create")
    clock[0] += 0.3
    thread.block()
    _statement(checkout, clock, thread, "app.py:10 in create")
    assert reader.asked == []
    assert checkout.gap == 0.0
    assert not checkout.held_idle(held=0.31, idle=0.3)


def test_a_gap_that_began_in_another_thread_is_not_measured(
    clock: list[float], monkeypatch: pytest.MonkeyPatch
) -> None:
    # A FastAPI sync dependency runs its statement in one worker thread, the sync endpoint
    # its own in another, and the teardown gives the connection back from a third: the
    # usage of one thread says nothing of the time since a statement in another.
    thread = Thread()
    ident = [1]
    monkeypatch.setattr(checkouts, "get_ident", lambda: ident[0])
    checkout = Checkout(clock[0], "/items/{id}", thread, None)
    _statement(checkout, clock, thread, "deps.py:41 in get_current_user")
    clock[0] += 0.3  # the endpoint's turn in the thread pool
    thread.block()
    ident[0] = 2
    _statement(checkout, clock, thread, "items.py:30 in read_item")
    assert checkout.gap == 0.0
    clock[0] += 0.2  # an outbound call in the endpoint: measured, in its own thread
    thread.block()
    _statement(checkout, clock, thread, "items.py:32 in read_item")
    assert checkout.gap == pytest.approx(0.2)
    clock[0] += 0.4  # the response sent, then the teardown's turn
    thread.block()
    ident[0] = 3
    checkout.ended(clock[0], lambda: "")
    assert checkout.gap == pytest.approx(0.2)
    assert (checkout.before, checkout.after) == (
        "items.py:30 in read_item",
        "items.py:32 in read_item",
    )
