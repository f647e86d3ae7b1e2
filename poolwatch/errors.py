"""Exceptions poolwatch raises. Each subclasses the builtin it refines."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from poolwatch.events import Finding

__all__ = [
    "ConfigError",
    "NPlusOneError",
    "NPlusOneWarning",
    "PoolTimeoutError",
    "PoolWatchError",
]


class PoolWatchError(Exception):
    """Base class for errors raised by poolwatch itself."""


class ConfigError(PoolWatchError, ValueError):
    """A setting has a value poolwatch cannot use.

    The message names the setting, the value given and what is allowed, e.g.
    ``POOLWATCH_METRICS_PATH='metrics': must start with '/'``.
    """

    def __init__(self, setting: str, value: object, allowed: str) -> None:
        self.setting = setting
        self.value = value
        self.allowed = allowed
        super().__init__(f"{setting}={value!r}: {allowed}")


class NPlusOneError(PoolWatchError, AssertionError):
    """A request or scope ended with N+1 or duplicate queries (``nplusone_mode="raise"``).

    An ``AssertionError`` so that a test hitting it fails rather than errors.
    ``findings`` lists every :class:`~poolwatch.Finding` of that request or block.
    """

    def __init__(self, findings: Sequence[Finding], where: str = "") -> None:
        self.findings = list(findings)
        lines = [f"{len(self.findings)} query finding(s){' in ' + where if where else ''}:"]
        lines += [f"  - {finding}" for finding in self.findings]
        super().__init__("\n".join(lines))


class NPlusOneWarning(UserWarning):
    """Issued by the pytest plugin in ``--poolwatch-nplusone=warn`` mode."""


class PoolTimeoutError(PoolWatchError, TimeoutError):
    """Waiting for a pooled connection took longer than the acquire timeout.

    The message says which pool, its limit, how many connections were in use and how
    many requests were waiting, and which routes held connections longest, e.g.::

        pool 'default': no connection within 2.00 s (limit 10, in use 10, waiting 31);
        held longest: GET /reports (8.1 s at app/reports.py:40 in build), ...
    """

    def __init__(
        self,
        pool: str,
        timeout: float,
        *,
        limit: int | None,
        in_use: int,
        waiting: int,
        holders: Sequence[tuple[str, str, float]] = (),
    ) -> None:
        self.pool = pool
        self.timeout = timeout
        self.limit = limit
        self.in_use = in_use
        self.waiting = waiting
        self.holders = list(holders)
        shown = "unknown" if limit is None else str(limit)
        message = (
            f"pool {pool!r}: no connection within {timeout:.2f} s "
            f"(limit {shown}, in use {in_use}, waiting {waiting})"
        )
        if self.holders:
            held = ", ".join(
                f"{route} ({seconds:.1f} s{f' at {site}' if site else ''})"
                for route, site, seconds in self.holders
            )
            message += f"; held longest: {held}"
        super().__init__(message)
