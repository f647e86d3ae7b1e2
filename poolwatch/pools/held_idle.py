"""The ``held_idle`` finding: a connection held across a wait, with the lines either side
and what it waited on.

:class:`~.checkout.Checkout` decides that a checkout was held across a wait (one the code
between two statements names, or its longest gap measured as spent blocked); this turns
that checkout into a :class:`~poolwatch.events.Finding` for the request's recorder, its
``waited_on`` and advice from the :class:`~.waits.Wait` the code names, if any.
"""

from __future__ import annotations

from poolwatch import context
from poolwatch.events import HELD_IDLE, Finding
from poolwatch.pools.checkout import Checkout
from poolwatch.pools.reader import WaitReader
from poolwatch.pools.waits import NETWORK, SLEEP, THREAD, Wait
from poolwatch.queries.recorder import QueryRecorder
from poolwatch.safety import FaultReporter

__all__ = ["HELD_IDLE_ADVICE", "HeldIdleReport", "advice", "example_advice"]

# What a held_idle finding tells to change, when the code names no wait.
HELD_IDLE_ADVICE = (
    "Release the connection before awaiting something else: commit or close the session, "
    "or end the transaction block, before the outbound call, and take a connection again "
    "after it; do slow work before opening the transaction."
)
_RELEASE = "commit or close the session, or end the transaction block"
_WHY = {
    THREAD: "the connection waits for a worker thread meanwhile, and for a free one when "
    "the thread pool is busy",
    NETWORK: "a slow or failing service then holds no connection of the pool",
}


def advice(wait: Wait | None) -> str:
    """What to change for a connection held across ``wait`` (``None``: not named)."""
    if wait is None:
        return HELD_IDLE_ADVICE
    target = wait.target
    if wait.kind == THREAD:
        what, instead = f"sending {target} to the thread pool", f"call {target}"
    elif wait.kind == NETWORK:
        what, instead = target, "make the call"
    else:
        what, instead = target, "wait"
    if wait.inside:
        what, instead = f"calling {wait.inside}, which waits on {target}", f"call {wait.inside}"
    why = _WHY.get(wait.kind)
    return (
        f"Release the connection before {what} ({_RELEASE}) and take one again after it, "
        f"or {instead} before taking the connection{f': {why}' if why else ''}."
    )


def example_advice(kind: str, fingerprint: str, relations: object, orm: str) -> str:
    """:func:`advice` for the reference's example, a transaction held across a call of
    ``_moderate``, which sleeps (called as the reference calls every kind's advice; the
    arguments are unused)."""
    return advice(Wait(SLEEP, "asyncio.sleep", inside="_moderate"))


class HeldIdleReport:
    """Turns one pool's held-idle checkouts into findings for the request's recorder."""

    __slots__ = ("_faults", "_pool", "_recorder", "waits")

    def __init__(self, recorder: QueryRecorder, faults: FaultReporter, pool: str) -> None:
        self._recorder = recorder
        self._faults = faults
        self._pool = pool
        self.waits = WaitReader()

    def call_path(self) -> str:
        """The call path of the application's line running now: the one that took or
        released a connection, asked from the observer's ``acquire_succeeded`` or (through
        :meth:`.Checkout.ended`) ``released``. The walk starts three frames up (this
        one's, then poolwatch's own, which it steps over anyway)."""
        recorder = self._recorder
        if not recorder.active:
            return ""
        # With the scope's memo: Tortoise takes a connection per query, from the line of
        # the loop whose statements were walked last.
        found = recorder.find_path_here(3)
        return (found[1] or found[0]) if found is not None else ""

    def __call__(self, checkout: Checkout, held: float, idle: float, transaction: bool) -> None:
        """A connection was held ``held`` seconds, ``idle`` of them running no statement,
        across a wait: a finding, naming the lines either side of it.

        Called by the observer as the release is reported: the call path's two frames to
        skip are this one and the observer's.
        """
        recorder = self._recorder
        try:
            wait = checkout.known
            if wait is not None:
                before, after = checkout.known_before, checkout.known_after
            else:
                before, after = checkout.before, checkout.after
            if not after and recorder.active:  # the gap ran until the release: here
                found = recorder.finder.find_path(2)
                after = (found[1] or found[0]) if found is not None else ""
            work = context.current_scope()
            finding = Finding(
                kind=HELD_IDLE,
                route=checkout.route,
                fingerprint="",
                count=1,
                duration=idle,
                call_site=after.rpartition(" -> ")[2],
                suggestion=advice(wait),
                pool=self._pool,
                method=work.method if work is not None else "",
                call_path=after,
                held=held,
                before=before,
                transaction=transaction,
                waited_on=str(wait) if wait is not None else "",
            )
            recorder.report_held_idle(finding)
        except Exception as exc:
            self._faults.report("detection", exc)
