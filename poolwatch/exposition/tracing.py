"""The trace id of the request being served, for exemplars.

OpenTelemetry's current span wins when OpenTelemetry is in use (its ASGI middleware runs
outside poolwatch's); otherwise a W3C ``traceparent`` header set by a proxy or the caller.
poolwatch never imports OpenTelemetry itself.
"""

from __future__ import annotations

import re
import sys
from collections.abc import Mapping
from typing import Any

__all__ = ["trace_id_of"]

# version-traceid-parentid-flags; an all-zero trace id is invalid
_TRACEPARENT = re.compile(rb"^[0-9a-f]{2}-([0-9a-f]{32})-[0-9a-f]{16}-[0-9a-f]{2}")
_ZERO = "0" * 32


def trace_id_of(asgi_scope: Mapping[str, Any]) -> str | None:
    """The 32-hex-digit trace id of the request in ``asgi_scope``, or ``None``."""
    otel = sys.modules.get("opentelemetry.trace")
    # FastAPI imports OpenTelemetry's API whether or not anyone traces, and asking it for
    # the current span costs six Python calls per request. Without an installed tracer
    # provider no span is ever recorded, so it is asked only when there is one. The public
    # get_tracer_provider() reads the environment on every call; this reads the global it
    # returns (if a version renames it, OpenTelemetry is asked every time). A context
    # propagated without any provider came in a traceparent header, which is read next.
    if otel is not None and getattr(otel, "_TRACER_PROVIDER", True) is not None:
        context = otel.get_current_span().get_span_context()
        if context.is_valid:
            return format(context.trace_id, "032x")
    for name, value in asgi_scope.get("headers", ()):
        if name == b"traceparent":
            match = _TRACEPARENT.match(value.strip().lower())
            if match is not None and match.group(1).decode() != _ZERO:
                return match.group(1).decode()
    return None
