"""poolwatch's count of checkouts against the driver's own count of connections in use.

poolwatch sees every checkout that goes through the ORM; the driver sees every connection
it has handed out, whoever took it. When the two disagree, a connection is out that
nobody will give back (a leak in the app, in the ORM, or in poolwatch), or poolwatch has
lost track of a return. Neither is visible in the pool gauges alone: a pool of 10 that
has lost 10 connections looks exactly like a pool of 10 that is busy.

Both functions here are pure: the collector feeds :func:`drift` at scrape time, and the
leak scan feeds :class:`Unaccounted` once a second.
"""

from __future__ import annotations

from collections import deque

__all__ = ["Unaccounted", "drift"]


def drift(used: int, checked_out: int, pending: int, returning: int) -> int:
    """How far poolwatch's view of a pool is from the driver's, in connections.

    Positive: connections the driver has out that poolwatch cannot account for. Negative:
    checkouts poolwatch holds that the driver has back. Zero when they agree.

    ``pending`` acquires and ``returning`` releases are in the middle of a hand-over: at
    this instant the driver may or may not count each of them. They are counted on
    whichever side makes the difference smaller, so a busy pool never shows drift that a
    moment's wait would undo.
    """
    if used > checked_out + pending + returning:
        return used - (checked_out + pending + returning)
    if used < checked_out:
        # A connection the driver dropped (the server went away) while the app still
        # holds its proxy also lands here, until the app's block ends.
        return used - checked_out
    return 0


class Unaccounted:
    """Connections unaccounted for throughout the last ``threshold`` seconds, as leaks.

    A leak is a connection out of the pool for longer than the threshold. For the ones
    poolwatch did not see taken there is no checkout to time, so this takes the lowest
    positive drift over the span: that many were out, unaccounted for, all along. Each is
    reported once; when some come back, later ones can be reported again.
    """

    __slots__ = ("_samples", "reported")

    def __init__(self) -> None:
        self._samples: deque[tuple[float, int]] = deque()
        self.reported = 0

    def sample(self, now: float, drift: int, threshold: float) -> int:
        """Record the drift at ``now``; returns how many new leaks that makes."""
        samples = self._samples
        samples.append((now, max(0, drift)))
        # Keep one sample at or before the start of the span, so that "all along" holds.
        while len(samples) > 1 and samples[1][0] <= now - threshold:
            samples.popleft()
        if samples[0][0] > now - threshold:
            self.reported = min(self.reported, max(0, drift))
            return 0
        floor = min(count for _, count in samples)
        new = max(0, floor - self.reported)
        self.reported = floor
        return new
