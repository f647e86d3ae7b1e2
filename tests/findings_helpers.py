"""Reading poolwatch's findings back in tests that are not about slow queries.

A statement that a loaded machine makes slower than ``slow_query_threshold`` is a
``slow_query`` finding beside the ones a test expects: no bug of the code under test,
so such tests compare the other findings, or give their own PoolWatch a threshold that
no statement of theirs reaches. The tests about slow queries keep theirs.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any, TypeVar

from poolwatch import Finding
from poolwatch.events import SLOW_QUERY

NEVER_SLOW = 1e9
"""A ``slow_query_threshold`` (seconds, finite as the setting asks) that no statement of
a test reaches."""

F = TypeVar("F", Finding, dict[str, Any])


def without_slow(findings: Iterable[F]) -> list[F]:
    """``findings`` (as ``capture()`` or ``PoolWatch.findings()`` give them) but the slow
    queries, in their order."""
    return [f for f in findings if _kind(f) != SLOW_QUERY]


def _kind(finding: Finding | dict[str, Any]) -> str:
    return finding.kind if isinstance(finding, Finding) else str(finding["kind"])
