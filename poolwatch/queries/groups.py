"""The statements of one scope, grouped in order, for the rules of :mod:`.detect`.

A :class:`ScopeQueries` is filled with the :class:`~poolwatch.events.QueryEvent` of one
request (or ``poolwatch.scope`` block): noted as they happen, and grouped in batches
(:meth:`ScopeQueries.flush`) before anything reads the groups. Reads and writes are
grouped by fingerprint, application call path and pool (:class:`QueryGroup`); BEGIN,
COMMIT, SET and the like are the ORM's bookkeeping and are not grouped. A group counts
statements, and calls: all the statements one ORM operation ran by design (a
``Session.merge``, a flush) are one call. An exact repeat of a read (the same text and
parameters on the same pool) is counted apart (:class:`Repeat`), unless a write or a
COMMIT or ROLLBACK on its pool came in between: after either, a read may see other rows.

Noting runs for every statement while detection is on, so it is a list append; the
grouping's counting is inline and bounded per scope; judging the groups is
:func:`~poolwatch.queries.detect.detect`'s. Pure: nothing here reads a clock, a stack or
a setting.
"""

from __future__ import annotations

import threading

from poolwatch.events import QueryEvent
from poolwatch.queries.callsite import WalkMemo

__all__ = [
    "DATA_OPERATIONS",
    "READS",
    "GroupKey",
    "QueryGroup",
    "Repeat",
    "ScopeQueries",
]

# Memory bound per scope: a request with more distinct statements than this is already
# reported (its loop groups exist long before); the rest is counted, not grouped.
MAX_GROUPS = 4096
MAX_REPEATS = 16384

READS = frozenset({"SELECT"})
_WRITES = frozenset({"INSERT", "UPDATE", "DELETE"})
DATA_OPERATIONS = READS | _WRITES
"""Statements that touch data; BEGIN, COMMIT, SET and the like are bookkeeping."""

# Distinct callers of a duplicate kept per statement: past a few, the first ones tell.
MAX_CALLERS = 8

# Held while a scope's noted statements are grouped (ScopeQueries.flush): rare (a scope's
# end, a transaction's, a few hundred statements), so one lock for every scope.
_flushing = threading.Lock()

GroupKey = tuple[str, str, str]
"""(fingerprint, call path, pool): what one group of statements shares."""


class QueryGroup:
    """Statements of one fingerprint from one call path on one pool."""

    __slots__ = (
        "again", "batched", "by_relation", "call", "call_site", "calls", "count", "key",
        "operation", "orm_call", "pool", "relation", "reported", "seconds", "serialized",
    )  # fmt: skip

    def __init__(self, key: GroupKey, operation: str, call_site: str) -> None:
        self.key = key
        self.count = 0
        # Calls: statements, but all those of one ORM operation's call count once.
        self.calls = 0
        # The last ORM operation's frame, held so that its identity tells the next call
        # from it (a frame's id is reused once it is let go); dropped when judged.
        self.call: object = None
        self.seconds = 0.0
        self.batched = 0
        # Reads that repeated an earlier one of this group exactly (same parameters):
        # a loop over rows runs with different parameters, a repeat is a duplicate.
        self.again = 0
        self.operation = operation
        self.pool = key[2]
        self.call_site = call_site
        self.by_relation = False
        self.relation = ""
        self.orm_call = ""
        self.serialized = False
        self.reported = False  # a finding already: a late statement reports it no more


class Repeat:
    """One exact statement (text and parameters) on one pool and how often it ran."""

    __slots__ = ("call_site", "count", "fingerprint", "path", "paths", "pool", "seconds")

    def __init__(self, first: QueryEvent, again: QueryEvent) -> None:
        self.count = 2
        self.seconds = first.seconds + again.seconds
        self.fingerprint = first.fingerprint
        self.call_site = first.call_site
        self.path = first.path
        self.pool = first.pool
        # Each distinct call path that ran it, the first first.
        self.paths = [first.path]
        self.caller(again.path)

    def caller(self, path: str) -> None:
        if path not in self.paths and len(self.paths) < MAX_CALLERS:
            self.paths.append(path)


class ScopeQueries:
    """The queries of one scope, noted as they arrive and grouped for detection."""

    __slots__ = ("first", "groups", "loaded", "memo", "pending", "repeats", "reported", "writes")

    def __init__(self) -> None:
        self.groups: dict[GroupKey, QueryGroup] = {}
        # Statements noted but not grouped yet, in order (see flush): the recorder appends
        # here, a C call, and they are grouped in one loop, in the scope's order.
        self.pending: list[QueryEvent] = []
        # The call-site finder's memo of the scope's last walk (CallSiteFinder.find_path):
        # kept here, the frame it holds lives no longer than the scope.
        self.memo = WalkMemo()
        # Relations the scope's queries loaded eagerly (Model.attribute) -> the call paths
        # of those queries: advice never asks for a loader that is there already.
        self.loaded: dict[str, set[str]] = {}
        # identity -> the first event with it; identity -> counts, once it repeats
        self.first: dict[int, QueryEvent] = {}
        self.repeats: dict[int, Repeat] = {}
        # pool -> writes and transaction ends so far: a read after a write on its pool, or
        # after a COMMIT or ROLLBACK, may see other rows (exists -> INSERT -> exists, get ->
        # UPDATE -> COMMIT -> refresh), so it repeats nothing before it.
        self.writes: dict[str, int] = {}
        # (recorder id, kind) already counted for this scope: the counters count scopes,
        # not findings, and each PoolWatch judging the scope counts in its own registry.
        self.reported: set[tuple[int, str]] = set()

    def transaction_ended(self, pool: str) -> None:
        """A COMMIT or ROLLBACK on ``pool``: later reads repeat nothing before it."""
        if self.pending:
            self.flush()
        self.writes[pool] = self.writes.get(pool, 0) + 1

    def flush(self) -> None:
        """Group the statements noted in :attr:`pending`, in the order they ran.

        Grouping each statement as it ends costs two to three times what it costs here:
        between two statements the ORM and the driver push this code out of the CPU's
        caches, and a loop over a scope's statements runs warm. Whoever reads the groups
        flushes first (:func:`~poolwatch.queries.detect.detect`, :meth:`add`), and so
        does a transaction's end, which changes what the reads after it repeat.
        """
        with _flushing:
            # In place, under a lock: a statement another thread notes meanwhile stays
            # for the next flush, and two flushes never group one statement twice.
            pending = self.pending
            ended = len(pending)
            add = self._add
            for index in range(ended):
                add(pending[index], None)
            del pending[:ended]

    def add(self, event: QueryEvent, call: object = None) -> QueryGroup | None:
        """Record ``event``, after those noted before it; returns its group (``None``
        for statements not grouped).

        ``call`` is the frame of the ORM operation that ran it (a merge, a flush), if one
        did: the statements of one such call count as one call.
        """
        if self.pending:
            self.flush()
        return self._add(event, call)

    def _add(self, event: QueryEvent, call: object) -> QueryGroup | None:
        operation = event.operation
        if operation not in DATA_OPERATIONS:
            return None  # BEGIN, COMMIT, SET, PRAGMA: the ORM's bookkeeping
        pool = event.pool
        path = event.call_path or event.call_site
        key = (event.fingerprint, path, pool)
        group = self.groups.get(key)
        if group is None:
            if len(self.groups) >= MAX_GROUPS:
                return None
            group = self.groups[key] = QueryGroup(key, operation, event.call_site)
        # The group's counts, inline: this runs for every statement, and a method call
        # costs as much as the counting.
        group.count += 1
        if call is None:
            group.calls += 1
        elif call is not group.call:
            group.calls += 1
            group.call = call
            group.orm_call = event.orm_call
        group.seconds += event.seconds
        group.by_relation |= event.by_relation
        if event.relation and not group.relation:  # the first relation named
            group.relation = event.relation
        group.serialized |= event.serialized
        group.batched += event.in_list > 1  # a multi-item IN (...): one chunk of a batch
        if operation in READS:
            identity = event.identity
            if identity is not None:
                # After a write or a transaction's end on its pool, the same statement is
                # another read (the identity already tells two pools apart).
                writes = self.writes.get(pool) if self.writes else None
                if writes:
                    identity = hash((identity, writes))
                if (self.repeats and identity in self.repeats) or identity in self.first:
                    group.again += self._repeated(identity, event, path)
                elif len(self.first) < MAX_REPEATS:
                    # Most statements run once: keep the event itself, and make the
                    # counter only when the same statement and parameters come back.
                    self.first[identity] = event
        else:
            self.writes[pool] = self.writes.get(pool, 0) + 1
        return group

    def _repeated(self, identity: int, event: QueryEvent, path: str) -> bool:
        """Count a repeat of a statement and parameters seen before; True if it repeats
        one from the same call path."""
        repeat = self.repeats.get(identity)
        if repeat is not None:
            repeat.count += 1
            repeat.seconds += event.seconds
            repeat.caller(path)
            return repeat.path == path
        first = self.first[identity]
        if len(self.repeats) < MAX_REPEATS:
            self.repeats[identity] = Repeat(first, event)
        return first.path == path
