"""Faults inside poolwatch are counted and logged, never raised into the app.

Every piece of poolwatch code that runs inside the user's request path reports its own
exceptions here instead of letting them escape. The app's own exceptions (including the
database's) never pass through this module: adapters re-raise them untouched.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

__all__ = ["FaultReporter"]

logger = logging.getLogger("poolwatch")


class FaultReporter:
    """Counts internal errors per component and logs the first one of each component.

    ``count`` is called with the component name; the agent wires it to
    ``poolwatch_internal_errors_total``. Logging once per component keeps a fault on the
    hot path from flooding the app's logs with one line per query.
    """

    __slots__ = ("_count", "_logged")

    def __init__(self, count: Callable[[str], None] | None = None) -> None:
        self._count = count
        self._logged: set[str] = set()

    def report(self, component: str, exc: BaseException) -> None:
        """Record that ``component`` failed with ``exc``. Never raises."""
        try:
            if self._count is not None:
                self._count(component)
            if component not in self._logged:
                self._logged.add(component)
                logger.error(
                    "poolwatch internal error in %s (counted in "
                    "poolwatch_internal_errors_total; further errors of this component "
                    "are counted, not logged)",
                    component,
                    exc_info=(type(exc), exc, exc.__traceback__),
                )
        except Exception:
            pass
