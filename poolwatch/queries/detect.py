"""N+1, duplicate and bulk-write detection over the queries of one scope. Pure.

A :class:`ScopeQueries` is filled with the :class:`~poolwatch.events.QueryEvent` of one
request (or ``poolwatch.scope`` block) as they happen; :func:`detect` turns it into
findings under a :class:`Policy`. Nothing here reads a clock, a stack or a setting, so
the rules are tested by feeding events.

The rules:

* **N+1**: reads with one fingerprint from one application call path on one pool,
  ``threshold`` times or more (and ``min_duration`` seconds in total), with at least two
  different parameter sets. A group whose statements carry multi-item ``IN (...)`` lists
  is a chunked batch load, not a loop, and is left alone; one ``IN (?)`` per row is
  still a loop. Two callers of one helper (a current-user dependency and the route)
  have two call paths, so two groups.
* **duplicate**: the same statement with the same parameters on the same pool,
  ``duplicate_threshold`` times, with no write on that pool and no COMMIT or ROLLBACK in
  between (after either, a read may see other rows).
* **bulk write**: INSERT/UPDATE/DELETE with one fingerprint from one call path,
  ``threshold`` times: a hint to batch, never an N+1.

Statements that read no application table (``select 1``, ``select version()``, catalog
reads, ``SHOW``, ``PRAGMA``, savepoints) are the driver's or the dialect's bookkeeping:
they never count.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from fnmatch import fnmatchcase

from poolwatch.events import BULK_WRITE, DUPLICATE, NPLUSONE, SLOW_QUERY, Finding, QueryEvent

__all__ = [
    "DATA_OPERATIONS",
    "Policy",
    "ScopeQueries",
    "Suggest",
    "detect",
    "late_finding",
    "slow_finding",
]

# Memory bound per scope: a request with more distinct statements than this is already
# reported (its loop groups exist long before); the rest is counted, not grouped.
MAX_GROUPS = 4096
MAX_REPEATS = 16384

_READS = frozenset({"SELECT"})
_WRITES = frozenset({"INSERT", "UPDATE", "DELETE"})
DATA_OPERATIONS = _READS | _WRITES
"""Statements that touch data; BEGIN, COMMIT, SET and the like are bookkeeping."""

Suggest = Callable[[str, str, str, bool], str]
"""``suggest(kind, fingerprint, pool, by_relation)`` -> what to change, in one sentence;
``by_relation``: an ORM's relation loader ran the statements (its relation may be named)."""


@dataclasses.dataclass(frozen=True, slots=True)
class Policy:
    """When a group of queries becomes a finding, and which findings to ignore.

    The allow-lists hold shell-style patterns (``fnmatch``): ``"/admin/*"`` for routes,
    ``"select ... from audit_log*"`` for fingerprints, ``"*/reports.py:*"`` for call sites
    (any frame of a finding's call path).
    """

    threshold: int = 5
    min_duration: float = 0.0
    duplicate_threshold: int = 2
    allow_routes: tuple[str, ...] = ()
    allow_fingerprints: tuple[str, ...] = ()
    allow_call_sites: tuple[str, ...] = ()

    def allows(self, finding: Finding) -> bool:
        """Whether ``finding`` is allow-listed (and so not reported)."""
        return (
            any(fnmatchcase(finding.route, p) for p in self.allow_routes)
            or any(fnmatchcase(finding.fingerprint, p) for p in self.allow_fingerprints)
            or any(
                fnmatchcase(site, p)
                for site in finding.path.split(" -> ")
                for p in self.allow_call_sites
            )
        )


_Key = tuple[str, str, str]
"""(fingerprint, call path, pool): what one group of statements shares."""


class _Group:
    """Statements of one fingerprint from one call path on one pool."""

    __slots__ = (
        "again", "batched", "by_relation", "call_site", "count", "operation", "pool", "seconds",
    )  # fmt: skip

    def __init__(self, operation: str, pool: str, call_site: str) -> None:
        self.count = 0
        self.seconds = 0.0
        self.batched = 0
        # Reads that repeated an earlier one of this group exactly (same parameters):
        # a loop over rows runs with different parameters, a repeat is a duplicate.
        self.again = 0
        self.operation = operation
        self.pool = pool
        self.call_site = call_site
        self.by_relation = False


class _Repeat:
    """One exact statement (text and parameters) on one pool and how often it ran."""

    __slots__ = ("call_site", "count", "fingerprint", "path", "pool", "seconds")

    def __init__(self, first: QueryEvent, again: QueryEvent) -> None:
        self.count = 2
        self.seconds = first.seconds + again.seconds
        self.fingerprint = first.fingerprint
        self.call_site = first.call_site
        self.path = first.path
        self.pool = first.pool


class ScopeQueries:
    """The queries of one scope, grouped for detection as they arrive."""

    __slots__ = ("first", "groups", "repeats", "reported", "writes")

    def __init__(self) -> None:
        self.groups: dict[_Key, _Group] = {}
        # identity -> the first event with it; identity -> counts, once it repeats
        self.first: dict[int, QueryEvent] = {}
        self.repeats: dict[int, _Repeat] = {}
        # pool -> writes and transaction ends so far: a read after a write on its pool, or
        # after a COMMIT or ROLLBACK, may see other rows (exists -> INSERT -> exists, get ->
        # UPDATE -> COMMIT -> refresh), so it repeats nothing before it.
        self.writes: dict[str, int] = {}
        # (recorder id, kind) already counted for this scope: the counters count scopes,
        # not findings, and each PoolWatch judging the scope counts in its own registry.
        self.reported: set[tuple[int, str]] = set()

    def transaction_ended(self, pool: str) -> None:
        """A COMMIT or ROLLBACK on ``pool``: later reads repeat nothing before it."""
        self.writes[pool] = self.writes.get(pool, 0) + 1

    def add(self, event: QueryEvent) -> tuple[_Key, _Group] | None:
        """Record ``event``; returns its group (``None`` for statements not grouped)."""
        operation = event.operation
        if operation not in DATA_OPERATIONS:
            return None  # BEGIN, COMMIT, SET, PRAGMA: the ORM's bookkeeping
        path = event.path
        key = (event.fingerprint, path, event.pool)
        group = self.groups.get(key)
        if group is None:
            if len(self.groups) >= MAX_GROUPS:
                return None
            group = self.groups[key] = _Group(operation, event.pool, event.call_site)
        group.count += 1
        group.seconds += event.seconds
        if event.by_relation:
            group.by_relation = True
        if event.in_list > 1:
            group.batched += 1
        identity = event.identity
        if operation in _READS:
            if identity is not None:
                # After a write or a transaction's end on its pool, the same statement is
                # another read (the identity already tells two pools apart).
                writes = self.writes.get(event.pool)
                if writes:
                    identity = hash((identity, writes))
                if self._repeated(identity, event, path):
                    group.again += 1
        else:
            self.writes[event.pool] = self.writes.get(event.pool, 0) + 1
        return key, group

    def _repeated(self, identity: int, event: QueryEvent, path: str) -> bool:
        """Count a repeat of the same statement and parameters; True if it repeats one
        from the same call path."""
        repeat = self.repeats.get(identity)
        if repeat is not None:
            repeat.count += 1
            repeat.seconds += event.seconds
            return repeat.path == path
        # Most statements run once: keep the event itself, and make the counter only when
        # the same statement and parameters come back.
        first = self.first.get(identity)
        if first is None:
            if len(self.first) < MAX_REPEATS:
                self.first[identity] = event
            return False
        if len(self.repeats) < MAX_REPEATS:
            self.repeats[identity] = _Repeat(first, event)
        return first.path == path


def _group_finding(
    key: _Key,
    group: _Group,
    policy: Policy,
    route: str,
    suggest: Suggest,
    *,
    method: str,
) -> Finding | None:
    if group.count < policy.threshold or group.seconds < policy.min_duration:
        return None
    if group.operation in _READS:
        # N+1 is one statement run for rows: with different parameters. The very same
        # statement and parameters, however often, is a duplicate (found below); a loop
        # whose rows share some parameters (6 posts by 2 authors) is still the loop.
        if group.count - group.again < 2:
            return None
        # A chunked batch load: all but perhaps its last chunk carry many ids.
        if group.batched >= group.count - 1:
            return None
        kind = NPLUSONE
    else:
        kind = BULK_WRITE
    fingerprint, call_path, pool = key
    return Finding(
        kind=kind,
        route=route,
        fingerprint=fingerprint,
        count=group.count,
        duration=group.seconds,
        call_site=group.call_site,
        suggestion=suggest(kind, fingerprint, pool, group.by_relation),
        pool=pool,
        method=method,
        call_path=call_path,
    )


def detect(
    queries: ScopeQueries, policy: Policy, route: str, suggest: Suggest, method: str = ""
) -> list[Finding]:
    """The findings of one scope, biggest first, allow-listed ones left out.

    Exact repeats inside an N+1 loop (the same author loaded for several posts) are part
    of that loop's finding, not findings of their own: one fix removes both.
    """
    findings: list[Finding] = []
    loops: set[_Key] = set()
    for key, group in queries.groups.items():
        finding = _group_finding(key, group, policy, route, suggest, method=method)
        if finding is not None:
            findings.append(finding)
            if finding.kind == NPLUSONE:
                loops.add(key)
    # Several repeated statements of one fingerprint from one call path are one finding.
    repeated: dict[_Key, list[_Repeat]] = {}
    for repeat in queries.repeats.values():
        key = (repeat.fingerprint, repeat.path, repeat.pool)
        if repeat.count >= policy.duplicate_threshold and key not in loops:
            repeated.setdefault(key, []).append(repeat)
    for (fingerprint, call_path, pool), repeats in repeated.items():
        findings.append(
            Finding(
                kind=DUPLICATE,
                route=route,
                fingerprint=fingerprint,
                count=sum(r.count for r in repeats),
                duration=sum(r.seconds for r in repeats),
                call_site=repeats[0].call_site,
                suggestion=suggest(DUPLICATE, fingerprint, pool, False),
                pool=pool,
                method=method,
                call_path=call_path,
            )
        )
    findings = [f for f in findings if not policy.allows(f)]
    findings.sort(key=lambda f: (-f.count, f.kind, f.fingerprint))
    return findings


def late_finding(
    queries: ScopeQueries,
    added: tuple[_Key, _Group],
    policy: Policy,
    route: str,
    suggest: Suggest,
    *,
    method: str = "",
) -> Finding | None:
    """A finding made by a query that arrived after its scope was judged.

    A task that outlives its request (``asyncio.create_task`` in an endpoint) can still
    loop; its group is reported once, when it reaches the threshold.
    """
    key, group = added
    if group.count != policy.threshold:
        return None
    finding = _group_finding(key, group, policy, route, suggest, method=method)
    if finding is None or policy.allows(finding):
        return None
    return finding


def slow_finding(event: QueryEvent, suggest: Suggest, method: str = "") -> Finding:
    """The slow-query finding of one statement (the caller decides it was slow)."""
    return Finding(
        kind=SLOW_QUERY,
        route=event.route,
        fingerprint=event.fingerprint,
        count=1,
        duration=event.seconds,
        call_site=event.call_site,
        suggestion=suggest(SLOW_QUERY, event.fingerprint, event.pool, False),
        pool=event.pool,
        method=method,
        call_path=event.call_path,
    )
