"""The ``held_idle`` finding: a connection held across a wait, with the lines either side.

:class:`~.observer.PoolObserver` decides that a checkout was held idle (its longest gap
between two statements spent blocked, and most of the hold); this turns that checkout
into a :class:`~poolwatch.events.Finding` for the request's recorder.
"""

from __future__ import annotations

from poolwatch import context
from poolwatch.events import HELD_IDLE, Finding
from poolwatch.pools.observer import Checkout
from poolwatch.queries.recorder import QueryRecorder
from poolwatch.safety import FaultReporter

__all__ = ["HELD_IDLE_ADVICE", "HeldIdleReport"]

# What a held_idle finding tells to change.
HELD_IDLE_ADVICE = (
    "Release the connection before awaiting something else: commit or close the session, "
    "or end the transaction block, before the outbound call, and take a connection again "
    "after it; do slow work before opening the transaction."
)


class HeldIdleReport:
    """Turns one pool's held-idle checkouts into findings for the request's recorder."""

    __slots__ = ("_faults", "_pool", "_recorder")

    def __init__(self, recorder: QueryRecorder, faults: FaultReporter, pool: str) -> None:
        self._recorder = recorder
        self._faults = faults
        self._pool = pool

    def __call__(self, checkout: Checkout, held: float, idle: float, transaction: bool) -> None:
        """A connection was held ``held`` seconds, ``idle`` of them running no statement:
        a finding, naming the lines either side of its longest gap.

        Called by the observer as the release is reported: the call path's two frames to
        skip are this one and the observer's.
        """
        recorder = self._recorder
        try:
            after = checkout.after
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
                suggestion=HELD_IDLE_ADVICE,
                pool=self._pool,
                method=work.method if work is not None else "",
                call_path=after,
                held=held,
                before=checkout.before,
                transaction=transaction,
            )
            recorder.report_held_idle(finding)
        except Exception as exc:
            self._faults.report("detection", exc)
