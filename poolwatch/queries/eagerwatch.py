"""What the adapters' eager-load hooks report to, and the judging of a scope's loads.

An adapter that sees a query ask for an eager load asks its :class:`EagerWatch` for the
current scope's :class:`~poolwatch.queries.eager.ScopeEagerLoads` (``None`` when no
scope is being judged: detection off and no ``testing.capture()`` open, or inside
``allow_nplusone()``) and for the application's call path; reads and loaded rows are
marked on the scope's loads by the adapter directly, with no PoolWatch in between.
:func:`eager_findings` judges a scope when it ends, for the recorder and for captures.
"""

from __future__ import annotations

from collections.abc import Callable

from poolwatch.context import WorkScope, current_scope, nplusone_allowed
from poolwatch.events import Finding
from poolwatch.queries.callsite import Trace
from poolwatch.queries.eager import EagerLoad, ScopeEagerLoads, unused_findings
from poolwatch.safety import FaultReporter

__all__ = ["COMPONENT", "EagerWatch", "eager_findings", "note_eager_loads"]

COMPONENT = "eager_loads"  # what faults of the eager-load hooks are counted as

_Where = Callable[[int], "Trace | None"]


class EagerWatch:
    """One PoolWatch's side of the eager-load hooks: whether a scope is judged, where
    the application issued a query, and where faults are counted.

    ``active()`` says whether statements are judged at all (the recorder's ``active``);
    ``find_path(skip)`` is the recorder's :meth:`~.recorder.QueryRecorder.find_path_here`.
    """

    __slots__ = ("_active", "_find_path", "faults", "pool")

    def __init__(
        self,
        active: Callable[[], bool],
        find_path: _Where,
        faults: FaultReporter,
        pool: str = "",
    ) -> None:
        self._active = active
        self._find_path = find_path
        self.faults = faults
        self.pool = pool

    def for_pool(self, pool: str) -> EagerWatch:
        """The same watch, naming ``pool`` in its loads."""
        return EagerWatch(self._active, self._find_path, self.faults, pool)

    def judging(self) -> bool:
        """Whether the running code belongs to a scope being judged (what :meth:`loads`
        asks first, without making the scope's loads)."""
        return current_scope() is not None and not nplusone_allowed() and self._active()

    def loads(self) -> ScopeEagerLoads | None:
        """The current scope's eager loads (made on first use), or ``None`` when the
        running code belongs to no scope being judged."""
        work = current_scope()
        if work is None or nplusone_allowed() or not self._active():
            return None
        loads = work.eager
        if loads is None:
            loads = work.eager = ScopeEagerLoads()
        return loads

    def where(self, skip: int) -> tuple[str, str]:
        """The call site and call path of the application code running now (``skip``:
        frames of the caller's own to leave out)."""
        # With the scope's memo of its statements' last walk: the query being issued
        # comes from where they did, a loop's frame, most of the time.
        found = self._find_path(skip + 1)
        if found is None:
            return "unknown", ""
        return found.site, found.path


def note_eager_loads(work: WorkScope) -> None:
    """Tell the scope's statement rules which relations its queries loaded eagerly, before
    they judge it: a relation loaded up front and then queried per row is advised to be
    read from what was loaded, never to be loaded eagerly again."""
    loads, grouped = work.eager, work.grouped
    if loads is not None and grouped is not None:
        for load in loads.loads:
            grouped.loaded.setdefault(load.relation, set()).add(load.call_path or load.call_site)


def eager_findings(
    work: WorkScope, allows: Callable[[Finding], bool] = lambda finding: False
) -> list[Finding]:
    """The ``unused_eager_load`` findings of ``work``, which just ended.

    A finding's fingerprint is that of the query's own statement, found among the
    scope's statements by call path, pool and the parent model's table; empty where no
    single statement fits.
    """
    loads = work.eager
    if loads is None or not loads.loads:
        return []
    loads.settle()
    return unused_findings(
        loads,
        work.route,
        method=work.method,
        fingerprint=_fingerprints(work),
        allows=allows,
    )


def _fingerprints(work: WorkScope) -> Callable[[EagerLoad], str]:
    grouped = work.grouped

    def fingerprint(load: EagerLoad) -> str:
        if grouped is None:
            return ""
        path = load.call_path or load.call_site
        candidates = [
            shape
            for (shape, call_path, pool), group in grouped.groups.items()
            if call_path == path
            and group.operation == "SELECT"
            and (not load.pool or pool == load.pool)
        ]
        if load.table:
            named = [
                shape
                for shape in candidates
                if f"from {load.table} " in f"{shape} " or f'from "{load.table}"' in shape
            ]
            candidates = named or candidates
        return candidates[0] if len(candidates) == 1 else ""

    return fingerprint
