"""Test helpers: see the queries and findings of a block, and fail on a new N+1.

::

    from poolwatch.testing import assert_max_queries, capture

    async def test_author_page(client):
        with capture() as captured:
            await client.get("/authors/1")
        assert not captured.nplusone, captured.report()

    def test_list_is_two_queries(client):
        with assert_max_queries(2):
            client.get("/posts")

A capture sees the statements of every instrumented pool in the process while it is
open (so also those of an app served by ``TestClient`` in another thread), and judges
them with test thresholds: an N+1 is two statements from one call site. Requests that
end inside the block are judged one by one, like in production; statements outside any
request form one more scope of their own.

The app must be instrumented (``PoolWatch().instrument_tortoise()`` or
``instrument_sqlalchemy(engine)``); its ``nplusone_mode`` may be ``off``.
"""

from __future__ import annotations

import threading
from types import TracebackType

from poolwatch import context
from poolwatch.context import WorkScope, current_scope, nplusone_allowed
from poolwatch.errors import NPlusOneError
from poolwatch.events import DUPLICATE, NPLUSONE, UNUSED_EAGER_LOAD, Finding, QueryEvent
from poolwatch.queries.detect import Policy, detect, slow_finding
from poolwatch.queries.eagerwatch import eager_findings, note_eager_loads
from poolwatch.queries.groups import DATA_OPERATIONS, ScopeQueries
from poolwatch.queries.recorder import (
    TRANSACTION_END,
    add_finding_sink,
    add_sink,
    remove_finding_sink,
    remove_sink,
)
from poolwatch.queries.suggestions import relation_target, suggestion

__all__ = ["Capture", "assert_max_queries", "capture"]


class Capture:
    """The statements and findings of a ``with capture():`` block.

    Attributes:
        queries: every data statement (SELECT, INSERT, UPDATE, DELETE) in order; BEGIN,
            COMMIT and other bookkeeping are left out, so counts agree across drivers.
        findings: N+1, duplicate, bulk-write, slow-query, held-idle and unused eager
            load findings, filled as each request ends and completed when the block ends.
            Eager loads are tracked inside requests and ``poolwatch.scope`` blocks only.
    """

    def __init__(
        self,
        *,
        name: str = "capture",
        threshold: int = 2,
        duplicate_threshold: int = 2,
        min_duration: float = 0.0,
        slow_query_threshold: float = 0.5,
        raise_on_findings: bool = False,
        allow_routes: tuple[str, ...] = (),
        allow_fingerprints: tuple[str, ...] = (),
        allow_call_sites: tuple[str, ...] = (),
    ) -> None:
        self.name = name
        self.policy = Policy(
            threshold=threshold,
            min_duration=min_duration,
            duplicate_threshold=duplicate_threshold,
            allow_routes=allow_routes,
            allow_fingerprints=allow_fingerprints,
            allow_call_sites=allow_call_sites,
        )
        self.slow_query_threshold = slow_query_threshold
        self.raise_on_findings = raise_on_findings
        self.queries: list[QueryEvent] = []
        self.findings: list[Finding] = []
        self._ambient: WorkScope | None = None
        self._own = ScopeQueries()
        self._lock = threading.Lock()
        self._open = False

    # -- what a test reads -------------------------------------------------------------

    @property
    def nplusone(self) -> list[Finding]:
        """The N+1 findings."""
        return [f for f in self.findings if f.kind == NPLUSONE]

    @property
    def duplicates(self) -> list[Finding]:
        """The duplicate-query findings."""
        return [f for f in self.findings if f.kind == DUPLICATE]

    @property
    def unused_eager_loads(self) -> list[Finding]:
        """The unused eager load findings (an option whose relation nothing read)."""
        return [f for f in self.findings if f.kind == UNUSED_EAGER_LOAD]

    def report(self) -> str:
        """The statements and findings, one per line, for an assertion message."""
        lines = [f"{len(self.queries)} queries:"]
        lines += [f"  {i}. {q}" for i, q in enumerate(self.queries, 1)]
        if self.findings:
            lines.append(f"{len(self.findings)} findings:")
            lines += [f"  - {f}" for f in self.findings]
        return "\n".join(lines)

    def assert_max_queries(self, limit: int) -> None:
        """Fail, listing each statement's fingerprint and call site, above ``limit``."""
        if len(self.queries) > limit:
            raise AssertionError(f"expected at most {limit} queries, got {self.report()}")

    # -- the block ---------------------------------------------------------------------

    def __enter__(self) -> Capture:
        if self._open:
            raise RuntimeError("this capture is already open")
        self._open = True
        self._ambient = current_scope()
        add_sink(self._on_query)
        add_finding_sink(self._on_finding)
        context.add_scope_listener(self._on_scope_closed)
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        remove_sink(self._on_query)
        remove_finding_sink(self._on_finding)
        context.remove_scope_listener(self._on_scope_closed)
        self._open = False
        ambient = self._ambient
        route, method = (ambient.route, ambient.method) if ambient is not None else (self.name, "")
        own = detect(self._own, self.policy, route, suggestion, method, targets=relation_target)
        with self._lock:
            self.findings.extend(own)
        if exc_type is None and self.raise_on_findings:
            serious = [f for f in self.findings if f.kind in (NPLUSONE, DUPLICATE)]
            if serious:
                raise NPlusOneError(self.findings, where=self.name)

    async def __aenter__(self) -> Capture:
        return self.__enter__()

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.__exit__(exc_type, exc, tb)

    # -- fed by poolwatch --------------------------------------------------------------

    def _on_query(self, event: QueryEvent, call: object = None) -> None:
        if event.operation == TRANSACTION_END:
            if current_scope() is self._ambient:
                self._own.transaction_ended(event.pool)
            return
        if event.operation not in DATA_OPERATIONS:
            return
        slow = event.seconds >= self.slow_query_threshold
        with self._lock:
            self.queries.append(event)
            if slow:
                self.findings.append(slow_finding(event, suggestion))
        # Statements of requests are judged per request when it ends; the rest here.
        if current_scope() is self._ambient and not nplusone_allowed():
            self._own.add(event, call)

    def _on_finding(self, finding: Finding) -> None:
        with self._lock:
            self.findings.append(finding)

    def _on_scope_closed(self, work: WorkScope) -> None:
        if work is self._ambient or work.grouped is None:
            return
        note_eager_loads(work)
        found = detect(
            work.grouped,
            self.policy,
            work.route,
            suggestion,
            work.method,
            targets=relation_target,
        )
        found += eager_findings(work, self.policy.allows)
        with self._lock:
            self.findings.extend(found)


capture = Capture
"""``with capture() as captured:`` (or ``async with``): the statements and findings of a
block. ``raise_on_findings=True`` raises :class:`~poolwatch.NPlusOneError` when the block
ends with an N+1 or duplicate finding."""


class _MaxQueries(Capture):
    def __init__(self, limit: int) -> None:
        super().__init__(name=f"at most {limit} queries")
        self.limit = limit

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        super().__exit__(exc_type, exc, tb)
        if exc_type is None:
            self.assert_max_queries(self.limit)


def assert_max_queries(limit: int) -> Capture:
    """A block that fails when it runs more than ``limit`` data statements::

    with assert_max_queries(3):
        client.get("/authors/1")
    """
    if isinstance(limit, bool) or not isinstance(limit, int) or limit < 0:
        raise ValueError(f"limit={limit!r}: must be a whole number, 0 or more")
    return _MaxQueries(limit)
