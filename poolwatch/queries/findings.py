"""Where findings go: a bounded list of recent ones, and rate-limited log lines.

The list aggregates per (kind, method, route, fingerprint, call site): a loop that fires on
every request is one entry with an occurrence count, not a thousand entries. It is what
``GET /poolwatch/findings`` shows, newest first.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from typing import Any

from poolwatch.events import HELD_IDLE, NPLUSONE, UNUSED_EAGER_LOAD, Finding

__all__ = ["LINE_LIMIT", "FindingsLog", "FindingsLogger", "log_line"]

logger = logging.getLogger("poolwatch.findings")

_Key = tuple[str, str, str, str, str, tuple[str, ...]]


class _Entry:
    __slots__ = ("finding", "first_seen", "last_seen", "max_count", "occurrences")

    def __init__(self, finding: Finding, now: float) -> None:
        self.finding = finding
        self.first_seen = now
        self.last_seen = now
        self.occurrences = 0
        self.max_count = 0


class FindingsLog:
    """The most recent ``capacity`` distinct findings, with how often each was seen."""

    def __init__(self, capacity: int = 200, clock: Callable[[], float] = time.time) -> None:
        self._capacity = capacity
        self._clock = clock
        self._entries: OrderedDict[_Key, _Entry] = OrderedDict()
        # Findings come from the event loop and from threadpool threads alike.
        self._lock = threading.Lock()

    def add(self, finding: Finding) -> None:
        """Record one occurrence of ``finding``."""
        key = (
            finding.kind,
            finding.method,
            finding.route,
            finding.fingerprint,
            finding.call_path,
            # Two unused relations of one query are two entries.
            finding.relations if finding.kind == UNUSED_EAGER_LOAD else (),
        )
        now = self._clock()
        with self._lock:
            entry = self._entries.get(key)
            if entry is None:
                entry = self._entries[key] = _Entry(finding, now)
                if len(self._entries) > self._capacity:
                    self._entries.popitem(last=False)
            else:
                self._entries.move_to_end(key)
            entry.finding = finding
            entry.last_seen = now
            entry.occurrences += 1
            entry.max_count = max(entry.max_count, finding.count)

    def recent(self) -> list[dict[str, Any]]:
        """The findings as JSON-ready dicts, most recently seen first."""
        with self._lock:
            entries = list(reversed(self._entries.values()))
        return [
            {
                **entry.finding.to_dict(),
                "occurrences": entry.occurrences,
                "max_count": entry.max_count,
                "first_seen": _iso(entry.first_seen),
                "last_seen": _iso(entry.last_seen),
            }
            for entry in entries
        ]

    def __len__(self) -> int:
        return len(self._entries)


def _iso(timestamp: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(timestamp))


LINE_LIMIT = 300
"""About how long a log line gets before its call path; the full finding is in the
record's extra."""


def _clip(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 3] + "..."


def log_line(finding: Finding) -> str:
    """``finding`` in one line: what, where, how much, and its whole call path.

    The route and the statement are clipped to keep the line readable; the call path
    never is: it is a few frames of the application's own code, and the loop's line,
    which the fix needs, is one of the outer ones that a shortened path hid. The
    suggestion stays in the record's extra and the findings list.
    """
    path = finding.path
    if finding.kind == HELD_IDLE:
        inside = " in a transaction" if finding.transaction else ""
        return (
            f"held_idle on {_clip(finding.where, 60)}: held {finding.held * 1000:.0f} ms, "
            f"idle {finding.duration * 1000:.0f} ms{inside}, {finding.gap}"
        )
    if finding.kind == UNUSED_EAGER_LOAD:
        return (
            f"unused_eager_load on {_clip(finding.where, 60)}: "
            f"{', '.join(finding.relations)} loaded {finding.count} x and never read"
            f"{f' ({_clip(finding.fingerprint, 90)!r})' if finding.fingerprint else ''} "
            f"at {path}"
        )
    if finding.kind == NPLUSONE and len(finding.relations) > 1:  # one loop down a chain
        what = (
            f"{finding.count} queries along {' -> '.join(finding.relations)}, the first "
            f"{_clip(finding.fingerprint, 90)!r}"
        )
    else:
        what = f"{finding.count} x {_clip(finding.fingerprint, 90)!r}"
    return (
        f"{finding.kind} on {_clip(finding.where, 60)}: {what} "
        f"({finding.duration * 1000:.1f} ms) at {path}"
    )


class FindingsLogger:
    """One warning per finding, then at most one per ``interval`` per kind, fingerprint
    and route.

    Each line is short (:func:`log_line`) and carries the finding as structured data
    (``record.poolwatch_finding``) for JSON log formatters, and says how many were left
    unlogged since the last line.
    """

    def __init__(self, interval: float, clock: Callable[[], float] = time.monotonic) -> None:
        self._interval = interval
        self._clock = clock
        self._last: dict[tuple[str, str, str], float] = {}
        self._suppressed: dict[tuple[str, str, str], int] = {}
        self._lock = threading.Lock()

    def log(self, finding: Finding) -> bool:
        """Log ``finding`` unless one like it was logged recently; True if logged."""
        key = (finding.kind, finding.fingerprint + " ".join(finding.relations), finding.where)
        now = self._clock()
        with self._lock:
            last = self._last.get(key)
            if last is not None and now - last < self._interval:
                self._suppressed[key] = self._suppressed.get(key, 0) + 1
                return False
            if len(self._last) > 10_000:  # a bound, for apps with unbounded raw SQL
                self._last.clear()
            self._last[key] = now
            suppressed = self._suppressed.pop(key, 0)
        logger.warning(
            "poolwatch %s%s",
            log_line(finding),
            f" ({suppressed} more since the last report)" if suppressed else "",
            extra={"poolwatch_finding": finding.to_dict()},
        )
        return True
