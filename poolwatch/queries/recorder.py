"""From statements to findings: the mechanism around the pure rules of :mod:`detect`.

For each statement (while detection is on, or a ``testing.capture()`` block is open) the
recorder finds the call site, fingerprints the SQL and adds a
:class:`~poolwatch.events.QueryEvent` to the current scope's groups. When the scope ends
it asks :func:`~poolwatch.queries.detect.detect` for findings and reports them: metrics, a log
line, the recent-findings list, and in ``raise`` mode an :class:`NPlusOneError`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from poolwatch.config import Settings
from poolwatch.context import NO_ROUTE, WorkScope, current_scope, nplusone_allowed
from poolwatch.errors import NPlusOneError
from poolwatch.events import DUPLICATE, NPLUSONE, UNUSED_EAGER_LOAD, Finding, QueryEvent
from poolwatch.exposition.metrics import Metrics
from poolwatch.queries.callsite import MAX_PATH, CallSiteFinder, Trace, function_site
from poolwatch.queries.detect import Policy, Suggest, Targets, detect, late_finding, slow_finding
from poolwatch.queries.eagerwatch import eager_findings, note_eager_loads
from poolwatch.queries.findings import FindingsLog, FindingsLogger
from poolwatch.queries.fingerprint import DIALECTS, END, READ, WRITE, SqlShape, shapes
from poolwatch.queries.groups import QueryGroup, ScopeQueries
from poolwatch.queries.textcache import TextCache

__all__ = ["TRANSACTION_END", "UNKNOWN_SITE", "QueryRecorder", "add_sink", "remove_sink"]

UNKNOWN_SITE = "unknown"
_UNKNOWN = Trace(UNKNOWN_SITE, UNKNOWN_SITE, False, UNKNOWN_SITE)
_MAX_ENDPOINTS = 4096
_MAX_PENDING = 256  # statements noted before they are grouped (ScopeQueries.flush)
_JUDGED = frozenset({READ, WRITE})  # what detection groups: the app's reads and writes
TRANSACTION_END = "END"
"""The operation of the event a capture gets for a COMMIT or ROLLBACK (never listed)."""

# The open testing.capture() blocks: each sees every statement while it is open, with the
# frame of the ORM operation that ran it (see ScopeQueries.add), if one did.
Sink = Callable[[QueryEvent, object], None]
_sinks: list[Sink] = []


def add_sink(sink: Sink) -> None:
    """Hand every recorded statement to ``sink`` (for :func:`poolwatch.testing.capture`)."""
    _sinks.append(sink)


def remove_sink(sink: Sink) -> None:
    """Undo :func:`add_sink`."""
    if sink in _sinks:
        _sinks.remove(sink)


# The same blocks, for findings made outside any scope's statements (held_idle).
_finding_sinks: list[Callable[[Finding], None]] = []


def add_finding_sink(sink: Callable[[Finding], None]) -> None:
    """Hand every finding made at a connection's release to ``sink`` (captures)."""
    _finding_sinks.append(sink)


def remove_finding_sink(sink: Callable[[Finding], None]) -> None:
    """Undo :func:`add_finding_sink`."""
    if sink in _finding_sinks:
        _finding_sinks.remove(sink)


def sinks_open() -> bool:
    """Whether a capture block is open (statements must be recorded even with mode off)."""
    return bool(_sinks)


def _identity(sql: str, params: Any, pool: str, origin: str) -> int:
    """A hash of the statement, its parameters, its pool and the function its call path
    starts in; the values themselves are not kept.

    The same statement on two engines is two reads. So is the same row loaded by two
    unrelated callers (a current-user dependency and the route, for the author of the
    page): a repeat within one function's work (a loop, two lines of one endpoint) is
    what can be reused.
    """
    try:
        # One flat tuple per statement: this runs for every SELECT.
        kind = type(params)
        if kind is list or kind is tuple:
            return hash((pool, origin, sql, *params))
        if kind is dict:
            return hash((pool, origin, sql, *params.items()))
        return hash((pool, origin, sql, params))
    except TypeError:  # an unhashable value (a JSON document, an array parameter)
        return hash((pool, origin, sql, repr(params)))


class QueryRecorder:
    """Statements in, findings out, for one PoolWatch."""

    def __init__(
        self,
        settings: Settings,
        metrics: Metrics,
        suggest: Suggest,
        targets: Targets | None = None,
    ) -> None:
        self.mode = settings.nplusone_mode
        self.enabled = self.mode != "off"
        self.policy = Policy(
            threshold=settings.nplusone_threshold,
            min_duration=settings.nplusone_min_duration,
            duplicate_threshold=settings.duplicate_threshold,
            allow_routes=settings.allow_routes,
            allow_fingerprints=settings.allow_fingerprints,
            allow_call_sites=settings.allow_call_sites,
        )
        self.slow_threshold = settings.slow_query_threshold
        self.finder = CallSiteFinder(settings.ignore_modules)
        self.recent = FindingsLog()
        self._logger = FindingsLogger(settings.findings_log_interval)
        self._metrics = metrics
        self._suggest = suggest
        self._targets = targets
        self._route_children: dict[str, tuple[Any, Any, Any, Any]] = {}
        # endpoint function -> its "file:line in function", for serialization's findings
        self._endpoints: dict[Any, str] = {}
        self._shapes: dict[str, TextCache[SqlShape]] = {d: shapes(d) for d in DIALECTS}
        self._generic = shapes()

    @property
    def active(self) -> bool:
        """Whether statements need recording at all."""
        return self.enabled or bool(_sinks)

    def find_path_here(self, skip: int) -> Trace | None:
        """Where the code running now comes from (see :meth:`CallSiteFinder.find_path`;
        ``skip`` counts as there, from this method's caller), walked with the current
        scope's memo: a checkout, a release or an eager query issued from the line of
        the loop whose statements were walked last is that walk's answer again."""
        work = current_scope()
        grouped = None if work is None else work.grouped
        return self.finder.find_path(skip + 1, MAX_PATH, None if grouped is None else grouped.memo)

    # -- per statement (hot path) ------------------------------------------------------

    def record(  # noqa: PLR0912 - the hot path, in one function on purpose (see below)
        self,
        work: WorkScope | None,
        sql: str,
        seconds: float,
        failed: bool,
        params: Any,
        *,
        pool: str,
        dialect: str = "",
    ) -> str:
        """Add one statement to its scope, and report it if it was slow; its call path
        ("" where none was walked).

        This runs for every statement while detection is on, so it calls as few Python
        functions as it can: the shape of the text and the call path are cache hits, and
        the grouping is one call (:meth:`ScopeQueries.add`).
        """
        grouping = work is not None and not nplusone_allowed()
        if not grouping and not _sinks and seconds < self.slow_threshold:
            return ""  # nothing to group it with, nobody capturing: skip the stack walk
        cache = self._shapes.get(dialect, self._generic)
        sql_shape = cache.known(sql) or cache.get(sql)
        role = sql_shape.role
        if role == END:
            self.transaction_ended(work if grouping else None, pool)
        if role not in _JUDGED:
            if seconds < self.slow_threshold:
                return ""  # BEGIN, COMMIT, SET, select 1: never grouped, nor captured
            operation = "OTHER"
        else:
            operation = sql_shape.operation
        grouped = None
        if grouping and work is not None:
            grouped = work.grouped
            if grouped is None:
                grouped = work.grouped = ScopeQueries()
        # Skip find_path, record and PoolObserver.query: they are always there. A loop's
        # statements walk the stack only down to the loop's frame (the scope's memo).
        trace = self.finder.find_path(3, MAX_PATH, None if grouped is None else grouped.memo)
        trace = trace or _UNKNOWN
        site, path, by_relation, origin, relation, call, serialized = trace
        if serialized:  # the response's serialization: the endpoint is the place
            site = path = self._endpoint_site(work)
            origin = site
        identity = _identity(sql, params, pool, origin) if role == READ else None
        # tuple.__new__ directly: the NamedTuple constructor is one more Python call.
        event: QueryEvent = tuple.__new__(
            QueryEvent,
            (
                sql_shape.fingerprint,
                operation,
                site,
                seconds,
                failed,
                pool,
                NO_ROUTE if work is None else work.route,
                sql_shape.in_list,
                identity,
                path,
                by_relation,
                relation,
                "" if call is None else call.f_code.co_qualname,  # the ORM operation's
                serialized,
            ),
        )
        if grouped is not None and work is not None:
            if call is None and not work.closed:
                # Grouped in a batch, warm (ScopeQueries.flush); bounded in memory.
                pending = grouped.pending
                pending.append(event)
                if len(pending) >= _MAX_PENDING:
                    grouped.flush()
            else:
                self._add_now(work, grouped, event, call)
        if _sinks or seconds >= self.slow_threshold:
            self._seen(event, call, work)
        return path or site

    def _seen(self, event: QueryEvent, call: object, work: WorkScope | None) -> None:
        """A statement that is slow, or that a capture sees."""
        if self.enabled and event.seconds >= self.slow_threshold:
            self._report_slow(event, "" if work is None else work.method)
        for sink in tuple(_sinks):
            sink(event, call)

    def _add_now(
        self, work: WorkScope, grouped: ScopeQueries, event: QueryEvent, call: object
    ) -> None:
        """Group a statement at once: one an ORM operation ran (its frame tells its calls
        apart, and is not kept waiting), or one of a scope judged already."""
        group = grouped.add(event, call)
        if work.closed and group is not None and self.enabled:
            self._late(work, grouped, group)

    def _late(self, work: WorkScope, grouped: ScopeQueries, group: QueryGroup) -> None:
        """A statement of a scope judged already (from a task that outlived its
        request): its group is reported once it becomes a finding."""
        late = late_finding(
            grouped, group, self.policy, work.route, self._suggest, method=work.method
        )
        if late is not None:
            self._report([late], grouped)

    def _endpoint_site(self, work: WorkScope | None) -> str:
        """``file:line in function`` of the request's endpoint, or "unknown"."""
        endpoint = None if work is None else work.endpoint
        if endpoint is None:
            return UNKNOWN_SITE
        site = self._endpoints.get(endpoint)
        if site is None:
            if len(self._endpoints) >= _MAX_ENDPOINTS:
                self._endpoints.clear()
            site = self._endpoints[endpoint] = function_site(endpoint) or UNKNOWN_SITE
        return site

    def transaction_ended(self, work: WorkScope | None, pool: str) -> None:
        """A COMMIT or ROLLBACK on ``pool``: reads after it repeat none before it."""
        if work is not None and work.grouped is not None:
            work.grouped.transaction_ended(pool)
        if _sinks:
            route = NO_ROUTE if work is None else work.route
            event = QueryEvent("", TRANSACTION_END, "", 0.0, False, pool, route, 0, None)
            for sink in tuple(_sinks):
                sink(event, None)

    # -- per scope ---------------------------------------------------------------------

    def scope_closed(self, work: WorkScope) -> list[Finding]:
        """Judge a scope that just ended; raises :class:`NPlusOneError` in raise mode."""
        if not self.enabled:
            return []
        route = work.route
        if route not in self._route_children:  # every route seen has its counters, at 0
            self._children(route)
        grouped = work.grouped
        if grouped is None:
            return []
        note_eager_loads(work)
        findings = detect(
            grouped, self.policy, route, self._suggest, work.method, targets=self._targets
        )
        findings += eager_findings(work, self.policy.allows)
        if findings:
            self._report(findings, grouped)
            if self.mode == "raise" and any(f.kind in (NPLUSONE, DUPLICATE) for f in findings):
                raise NPlusOneError(findings, where=findings[0].where)
        return findings

    # -- reporting ---------------------------------------------------------------------

    def _children(self, route: str) -> tuple[Any, Any, Any, Any]:
        children = self._route_children.get(route)
        if children is None:
            metrics = self._metrics
            children = self._route_children[route] = (
                metrics.nplusone.labels(route),
                metrics.duplicate_queries.labels(route),
                metrics.slow_queries.labels(route),
                metrics.unused_eager_loads.labels(route),
            )
        return children

    def _report(self, findings: list[Finding], grouped: ScopeQueries) -> None:
        nplusone, duplicates, _, unused_eager = self._children(findings[0].route)
        for finding in findings:
            # The counters count requests with a finding, not findings.
            counted = (id(self), finding.kind)
            if counted not in grouped.reported:
                grouped.reported.add(counted)
                if finding.kind == NPLUSONE:
                    nplusone.inc()
                elif finding.kind == DUPLICATE:
                    duplicates.inc()
                elif finding.kind == UNUSED_EAGER_LOAD:
                    unused_eager.inc()
            self.recent.add(finding)
            self._logger.log(finding)

    def report_held_idle(self, finding: Finding) -> None:
        """A connection held while idle (see :class:`~poolwatch.pools.observer.PoolObserver`):
        listed, logged and handed to open captures; never raised."""
        for sink in tuple(_finding_sinks):
            sink(finding)
        if not self.enabled or self.policy.allows(finding):
            return
        self.recent.add(finding)
        self._logger.log(finding)

    def _report_slow(self, event: QueryEvent, method: str) -> None:
        finding = slow_finding(event, self._suggest, method)
        if self.policy.allows(finding):
            return
        self._children(event.route)[2].inc()
        self.recent.add(finding)
        self._logger.log(finding)
