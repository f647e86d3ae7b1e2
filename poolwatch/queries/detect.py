"""N+1, duplicate and bulk-write detection over the queries of one scope. Pure.

The statements of one request (or ``poolwatch.scope`` block) are grouped as they arrive
(:class:`~poolwatch.queries.groups.ScopeQueries`); when the scope ends, :func:`detect`
judges the groups into findings under a :class:`Policy`, with the :class:`Evidence` that
a finding's advice is worded from. Nothing here reads a clock, a stack or a setting, so
the rules are tested by feeding events.

The rules:

* **N+1**: reads with one fingerprint from one application call path on one pool, in
  ``threshold`` calls or more (and ``min_duration`` seconds in total), with at least two
  different parameter sets. A call is one statement, or all the statements one ORM
  operation ran by design (a ``Session.merge`` loading what it merges, a flush, a
  cascade): those are that call's cost, and a loop is many calls. Loops whose loads walk
  a chain of relations from one place (``article.author``, then ``author.profile``) are
  one finding, naming the chain. A group whose statements carry multi-item ``IN (...)`` lists
  is a chunked batch load, not a loop, and is left alone; one ``IN (?)`` per row is
  still a loop. Two callers of one helper (a current-user dependency and the route)
  have two call paths, so two groups.
* **duplicate**: the same statement with the same parameters on the same pool,
  ``duplicate_threshold`` times, with no write on that pool and no COMMIT or ROLLBACK in
  between (after either, a read may see other rows); every distinct call path that ran
  it is listed.
* **bulk write**: INSERT/UPDATE/DELETE with one fingerprint from one call path, in
  ``threshold`` calls: a hint to batch, never an N+1.

Statements that read no application table (``select 1``, ``select version()``, catalog
reads, ``SHOW``, ``PRAGMA``, savepoints) are the driver's or the dialect's bookkeeping:
they never count.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from fnmatch import fnmatchcase
from typing import NamedTuple

from poolwatch.events import BULK_WRITE, DUPLICATE, NPLUSONE, SLOW_QUERY, Finding, QueryEvent
from poolwatch.queries.groups import READS, GroupKey, QueryGroup, Repeat, ScopeQueries

__all__ = [
    "Evidence",
    "Policy",
    "Suggest",
    "Targets",
    "detect",
    "late_finding",
    "slow_finding",
]


class Evidence(NamedTuple):
    """What a finding's advice is worded from: what the rules saw, no values."""

    kind: str
    fingerprint: str
    pool: str
    by_relation: bool = False
    """An ORM's relation loader ran the statements."""
    relations: tuple[str, ...] = ()
    """The relations they loaded, ``Model.attribute``, a chain outermost first."""
    orm_call: str = ""
    """The ORM operation each call ran them in (``Session.merge``), if one did."""
    endpoint: str = ""
    """The endpoint whose response's serialization ran them, if that is where."""
    loaded: tuple[str, ...] = ()
    """Relations the scope's queries loaded eagerly already (``Model.attribute``)."""


Suggest = Callable[[Evidence], str]
"""``suggest(evidence)`` -> what to change, in one sentence or two."""

Targets = Callable[[str, str], "str | None"]
"""``targets(pool, "Article.author")`` -> the model the relation loads (``"Author"``),
if the pool's ORM knows it: how a chain of relations is followed."""


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
        if not (self.allow_routes or self.allow_fingerprints or self.allow_call_sites):
            return False  # the usual case: nothing to match, and no generator to make
        return (
            any(fnmatchcase(finding.route, p) for p in self.allow_routes)
            or any(fnmatchcase(finding.fingerprint, p) for p in self.allow_fingerprints)
            or any(
                fnmatchcase(site, p)
                for site in finding.path.split(" -> ")
                for p in self.allow_call_sites
            )
        )


def _is_finding(group: QueryGroup, policy: Policy) -> str | None:
    """The kind of finding ``group`` makes under ``policy``, if any."""
    if group.calls < policy.threshold or group.seconds < policy.min_duration:
        return None
    if group.operation not in READS:
        return BULK_WRITE
    # N+1 is one statement run for rows: with different parameters. The very same
    # statement and parameters, however often, is a duplicate (found below); a loop
    # whose rows share some parameters (6 posts by 2 authors) is still the loop.
    if group.count - group.again < 2:
        return None
    # A chunked batch load: all but perhaps its last chunk carry many ids.
    if group.batched >= group.count - 1:
        return None
    return NPLUSONE


def _endpoint(group: QueryGroup) -> str:
    """The endpoint's name, when the response's serialization ran the group."""
    if not group.serialized:
        return ""
    return group.call_site.rpartition(" in ")[2]


def _finding(
    kind: str,
    links: list[tuple[GroupKey, QueryGroup]],
    route: str,
    *,
    method: str,
    suggest: Suggest,
    loaded: dict[str, set[str]],
) -> Finding:
    """One finding from one group, or from the groups of one chain of relations."""
    (fingerprint, call_path, pool), head = links[0]
    relations = tuple(group.relation for _, group in links if group.relation)
    # A relation loaded eagerly by a query elsewhere, and queried again here; loaded only
    # here, the statements are the eager load itself (a prefetch run per row).
    paths = {path for (_, path, _), _ in links}
    elsewhere = tuple(sorted(name for name, where in loaded.items() if where - paths))
    evidence = Evidence(
        kind,
        fingerprint,
        pool,
        by_relation=any(group.by_relation for _, group in links),
        relations=relations,
        orm_call=head.orm_call,
        endpoint=_endpoint(head),
        loaded=elsewhere,
    )
    return Finding(
        kind=kind,
        route=route,
        fingerprint=fingerprint,
        count=sum(group.count for _, group in links),
        duration=sum(group.seconds for _, group in links),
        call_site=head.call_site,
        suggestion=suggest(evidence),
        pool=pool,
        method=method,
        call_path=call_path,
        relations=relations,
    )


def _chains(
    loops: list[tuple[GroupKey, QueryGroup]], targets: Targets | None
) -> list[list[tuple[GroupKey, QueryGroup]]]:
    """N+1 groups, those that walk one chain of relations from one place joined.

    ``article.author.profile`` read per row is two loops from one line: the authors,
    then their profiles. Two groups of one call path and pool link when the model the
    first one's relation loads is the model of the second one's relation.
    """
    if targets is None or sum(1 for _, group in loops if group.relation) < 2:
        return [[loop] for loop in loops]
    by_place: dict[tuple[str, str], list[tuple[GroupKey, QueryGroup]]] = {}
    for loop in loops:
        (_, path, pool), _ = loop
        by_place.setdefault((path, pool), []).append(loop)
    chains: list[list[tuple[GroupKey, QueryGroup]]] = []
    for (_, pool), place in by_place.items():
        # model -> the loop whose relation starts at it (one each: else no chain)
        starts: dict[str, tuple[GroupKey, QueryGroup] | None] = {}
        for loop in place:
            model = loop[1].relation.partition(".")[0]
            if model:
                starts[model] = None if model in starts else loop
        following: dict[int, tuple[GroupKey, QueryGroup]] = {}
        for loop in place:
            target = targets(pool, loop[1].relation) if loop[1].relation else None
            successor = starts.get(target) if target else None
            if successor is not None and successor is not loop:
                following[id(loop[1])] = successor
        followers = {id(group) for _, group in following.values()}
        used: set[int] = set()
        # Chains start at a loop no other leads to; then, for relations that lead back
        # to where they started (hero.team, then the team's heroes: a back_populates
        # pair), at the first of the rest to run: every loop is in exactly one chain.
        heads = [loop for loop in place if id(loop[1]) not in followers]
        for loop in [*heads, *place]:
            if id(loop[1]) in used:
                continue
            chain = [loop]
            used.add(id(loop[1]))
            while (after := following.get(id(chain[-1][1]))) is not None:
                if id(after[1]) in used:
                    break
                chain.append(after)
                used.add(id(after[1]))
            chains.append(chain)
    return chains


def detect(
    queries: ScopeQueries,
    policy: Policy,
    route: str,
    suggest: Suggest,
    method: str = "",
    *,
    targets: Targets | None = None,
) -> list[Finding]:
    """The findings of one scope, biggest first, allow-listed ones left out.

    Exact repeats inside an N+1 loop (the same author loaded for several posts) are part
    of that loop's finding, not findings of their own: one fix removes both. ``targets``
    follows relations from model to model, so a chain of loops is one finding.
    """
    queries.flush()
    findings: list[Finding] = []
    loops: list[tuple[GroupKey, QueryGroup]] = []
    loaded = queries.loaded
    for key, group in queries.groups.items():
        group.call = None  # judged: the operation frame is not needed any more
        kind = _is_finding(group, policy)
        group.reported = kind is not None
        if kind == NPLUSONE:
            loops.append((key, group))
        elif kind is not None:
            findings.append(
                _finding(kind, [(key, group)], route, method=method, suggest=suggest, loaded=loaded)
            )
    for chain in _chains(loops, targets):
        findings.append(
            _finding(NPLUSONE, chain, route, method=method, suggest=suggest, loaded=loaded)
        )
    looped = {key for key, _ in loops}
    # Several repeated statements of one fingerprint from one call path are one finding.
    repeated: dict[GroupKey, list[Repeat]] = {}
    for repeat in queries.repeats.values():
        key = (repeat.fingerprint, repeat.path, repeat.pool)
        if repeat.count >= policy.duplicate_threshold and key not in looped:
            repeated.setdefault(key, []).append(repeat)
    for (fingerprint, call_path, pool), repeats in repeated.items():
        callers: list[str] = []
        for repeat in repeats:
            callers.extend(p for p in repeat.paths if p not in callers)
        findings.append(
            Finding(
                kind=DUPLICATE,
                route=route,
                fingerprint=fingerprint,
                count=sum(r.count for r in repeats),
                duration=sum(r.seconds for r in repeats),
                call_site=repeats[0].call_site,
                suggestion=suggest(Evidence(DUPLICATE, fingerprint, pool)),
                pool=pool,
                method=method,
                call_path=call_path,
                callers=tuple(callers) if len(callers) > 1 else (),
            )
        )
    findings = [f for f in findings if not policy.allows(f)]
    findings.sort(key=lambda f: (-f.count, f.kind, f.fingerprint))
    return findings


def late_finding(
    queries: ScopeQueries,
    added: QueryGroup,
    policy: Policy,
    route: str,
    suggest: Suggest,
    *,
    method: str = "",
) -> Finding | None:
    """A finding made by a query that arrived after its scope was judged (``added``: the
    group :meth:`~poolwatch.queries.groups.ScopeQueries.add` returned for it).

    A task that outlives its request (``asyncio.create_task`` in an endpoint) can still
    loop; its group is reported once, when it becomes a finding.
    """
    group = added
    if group.reported:
        return None
    kind = _is_finding(group, policy)
    if kind is None:
        return None
    group.reported = True
    finding = _finding(
        kind, [(group.key, group)], route, method=method, suggest=suggest, loaded=queries.loaded
    )
    return None if policy.allows(finding) else finding


def slow_finding(event: QueryEvent, suggest: Suggest, method: str = "") -> Finding:
    """The slow-query finding of one statement (the caller decides it was slow)."""
    return Finding(
        kind=SLOW_QUERY,
        route=event.route,
        fingerprint=event.fingerprint,
        count=1,
        duration=event.seconds,
        call_site=event.call_site,
        suggestion=suggest(Evidence(SLOW_QUERY, event.fingerprint, event.pool)),
        pool=event.pool,
        method=method,
        call_path=event.call_path,
    )
