"""Unused eager loads: the relations a query loaded up front that nothing read. Pure.

An adapter sees an ORM query ask for an eager load (SQLAlchemy's ``selectinload``,
``joinedload``, ``subqueryload``, ``immediateload``; Tortoise's ``prefetch_related``,
``select_related``) inside a judged scope, and adds one :class:`EagerLoad` per relation
the option names to the scope's :class:`ScopeEagerLoads`: a chained option
(``selectinload(Article.author).selectinload(Author.profile)``) is two, each judged on its
own. The adapter then counts the parent rows the query loaded (``loaded``) and marks a
relation ``read`` when the application (or FastAPI's serialization of a response model)
read it on one of those rows. When the scope ends, :func:`unused_findings` turns the loads
that loaded rows and were never read into ``unused_eager_load`` findings, one per call
path and relation.

Nothing here reads a clock, a stack, a setting or an ORM: the rule is tested by feeding
loads. Memory is bounded: a scope keeps at most :data:`MAX_LOADS` loads; later ones are
counted in ``dropped`` and not judged.
"""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Callable
from typing import Any

from poolwatch.events import UNUSED_EAGER_LOAD, Finding

__all__ = [
    "MAX_LOADS",
    "SQLALCHEMY",
    "TORTOISE",
    "EagerLoad",
    "ScopeEagerLoads",
    "advice",
    "example_advice",
    "unused_findings",
]

SQLALCHEMY = "sqlalchemy"
TORTOISE = "tortoise"

# Loads tracked per scope: a request issuing more eager-loading queries than this has a
# bigger problem, and a bound keeps a long scope (a batch job) from growing without end.
MAX_LOADS = 256

# What one eager load costs, by loader, for the advice.
_COST = {
    "selectinload": "one more query each time",
    "subqueryload": "one more query each time, repeating the parent query as a subquery",
    "immediateload": "one more load per row",
    "joinedload": "a wider join on the query itself",
    "prefetch_related": "one more query each time",
    "select_related": "a wider join on the query itself",
}


@dataclasses.dataclass(slots=True, eq=False)
class EagerLoad:
    """One relation that one execution of a query loaded up front.

    Attributes:
        relation: ``Model.attribute`` (``Article.author``).
        option: the whole option as written (``selectinload(Article.author)``, or
            ``prefetch_related("posts__comments")``).
        part: for a later part of a chained option, that part
            (``.selectinload(Author.profile)``, ``__comments``); empty for the first.
        keep: for such a part, the option without it (what to write instead).
        loader: ``selectinload``, ``joinedload``, ``subqueryload``, ``immediateload``,
            ``prefetch_related`` or ``select_related``.
        orm: ``"sqlalchemy"`` or ``"tortoise"``.
        call_site, call_path: where the application issued the query.
        pool: the pool it ran on ("" where the adapter cannot tell).
        table: the table of the query's parent model, lowercase (to find the query's
            own statement among those of its call path).
        owner: what the adapter needs to tell whether a row is one of this relation's
            parents (the parent model class); never read here.
        loaded: parent rows loaded with this relation (0: the query returned none).
        read: whether anything read the relation on one of those rows.
    """

    relation: str
    option: str
    loader: str
    orm: str
    call_site: str
    call_path: str
    pool: str = ""
    table: str = ""
    part: str = ""
    keep: str = ""
    owner: object = None
    loaded: int = 0
    read: bool = False

    @property
    def attribute(self) -> str:
        """The relation's attribute name (``author`` of ``Article.author``)."""
        return self.relation.rpartition(".")[2]


class ScopeEagerLoads:
    """The eager loads of one scope, keyed by a token the adapter chooses (the option
    object's id on SQLAlchemy, the parent row's id on Tortoise).

    ``holds`` keeps what a token's id refers to alive until the scope is judged, so an id
    is not reused by another object meanwhile. ``settles`` are the adapter's last words
    on the loads' ``loaded`` and ``read`` (where it counts them in bulk), run by
    :meth:`settle` before the loads are judged. ``releases`` are the adapter's undo
    actions (watched relations, listeners), run once by :meth:`release` when the scope
    has ended and been judged.
    """

    __slots__ = ("adapter", "by_token", "dropped", "holds", "loads", "releases", "settles")

    def __init__(self) -> None:
        self.loads: list[EagerLoad] = []
        self.by_token: dict[int, list[EagerLoad]] = {}
        self.holds: list[object] = []
        self.settles: list[Callable[[], None]] = []
        self.releases: list[Callable[[], None]] = []
        # What an adapter keeps for the scope (the sessions it listens to, the relations
        # it watches), by a name of its choosing.
        self.adapter: dict[str, Any] = {}
        self.dropped = 0

    def add(self, load: EagerLoad) -> bool:
        """Track ``load``; False once the scope holds :data:`MAX_LOADS` (not tracked)."""
        if len(self.loads) >= MAX_LOADS:
            self.dropped += 1
            return False
        self.loads.append(load)
        return True

    def bind(self, token: int, loads: list[EagerLoad], hold: object = None) -> None:
        """Let ``token`` find ``loads`` (keeping ``hold`` alive while the scope lasts)."""
        self.by_token.setdefault(token, []).extend(loads)
        if hold is not None:
            self.holds.append(hold)

    def settle(self) -> None:
        """Bring every load's ``loaded`` and ``read`` up to date (each settle brings what
        came since the last)."""
        for settle in self.settles:
            settle()

    def release(self) -> None:
        """Run the adapter's undo actions once and forget the loads."""
        releases, self.releases = self.releases, []
        for undo in releases:
            with contextlib.suppress(Exception):  # each reports its own faults
                undo()
        self.by_token.clear()
        self.holds.clear()
        self.settles.clear()
        self.adapter.clear()


def advice(load: EagerLoad) -> str:
    """What to remove, worded for the load's ORM and loader."""
    cost = _COST.get(load.loader, "work on every request")
    if load.part:
        what = f"the `{load.part}` part of `{load.option}`"
        fix = f"end the option before it: `{load.keep}`" if load.keep else "remove that part"
    else:
        what = f"`{load.option}`"
        fix = "remove the option"
    if load.orm == SQLALCHEMY:
        never = f"raiseload({load.relation})"
        if load.part and load.keep:
            never = f"{load.keep}.{never}"
        fix += (
            f"; where it must never load on this path, `{never}` makes a later read "
            "fail loudly instead of loading it lazily"
        )
    elif load.loader == "prefetch_related" and not load.part:
        fix = f'remove "{load.attribute}" from `prefetch_related(...)`'
    elif load.loader == "select_related" and not load.part:
        fix = f'remove "{load.attribute}" from `select_related(...)`'
    return f"Nothing read {load.relation}, which {what} loaded ({cost}): {fix}."


def example_advice(kind: str, fingerprint: str, relations: object, orm: str) -> str:
    """:func:`advice` for one example load per ORM (``Post.comments``), called as the
    reference calls every kind's advice (``kind``, ``fingerprint``, ``relations`` unused)."""
    if orm == SQLALCHEMY:
        option, loader = "selectinload(Post.comments)", "selectinload"
    else:
        option, loader = 'prefetch_related("comments")', "prefetch_related"
    return advice(EagerLoad("Post.comments", option, loader, orm, "", ""))


def unused_findings(
    scope: ScopeEagerLoads,
    route: str,
    *,
    method: str = "",
    fingerprint: Callable[[EagerLoad], str] = lambda load: "",
    allows: Callable[[Finding], bool] = lambda finding: False,
) -> list[Finding]:
    """The ``unused_eager_load`` findings of one scope, allow-listed ones left out.

    Loads are grouped per (call path, relation): an option at one line is used if any
    execution from that path had the relation read, and unused if executions from it
    loaded rows and none was read. A query that returned no rows loaded nothing and is
    no finding. ``count`` is the executions that loaded rows; ``fingerprint(load)`` is
    the query's statement shape, where the caller can tell.
    """
    groups: dict[tuple[str, str], list[EagerLoad]] = {}
    for load in scope.loads:
        if load.loaded:
            groups.setdefault((load.call_path or load.call_site, load.relation), []).append(load)
    unused = [loads for loads in groups.values() if not any(load.read for load in loads)]
    # Of one option's unused parts only the outermost is advice: with its relation never
    # read, the parts below it cannot have been either, and removing it removes them.
    outermost: dict[tuple[str, str], int] = {}
    for loads in unused:
        load = loads[0]
        key = (load.call_path or load.call_site, load.option)
        outermost[key] = min(outermost.get(key, len(load.part)), len(load.part))
    findings: list[Finding] = []
    for loads in unused:
        first = loads[0]
        if len(first.part) > outermost[(first.call_path or first.call_site, first.option)]:
            continue
        finding = Finding(
            kind=UNUSED_EAGER_LOAD,
            route=route,
            fingerprint=fingerprint(first),
            count=len(loads),
            duration=0.0,
            call_site=first.call_site,
            suggestion=advice(first),
            pool=first.pool,
            method=method,
            call_path=first.call_path,
            relations=(first.relation,),
        )
        if not allows(finding):
            findings.append(finding)
    findings.sort(key=lambda f: (-f.count, f.relations, f.path))
    return findings
