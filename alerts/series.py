"""Input series for promtool's unit tests, in its ``values`` notation (``0+1x10``)."""

from __future__ import annotations

import math
from collections.abc import Mapping

from prometheus_client.utils import floatToGoString

__all__ = [
    "POOL",
    "ROUTE",
    "bound_above",
    "bound_at_or_below",
    "histogram",
    "le_label",
    "per_minute",
    "series",
]

# The labels of the pool and of the route every test series is about.
POOL = {"job": "poolwatch", "instance": "app-1:8000", "pool": "default"}
ROUTE = {"job": "poolwatch", "instance": "app-1:8000", "route": "/authors/{author_id}"}


def series(name: str, labels: Mapping[str, str], values: str) -> dict[str, str]:
    """One input series: ``name{labels}`` and its values."""
    inner = ", ".join(f'{k}="{v}"' for k, v in labels.items())
    return {"series": f"{name}{{{inner}}}", "values": values}


def per_minute(bound: float, at: float, share: int) -> int:
    """Observations per minute up to ``bound`` when ``share`` of 100 are at ``at``."""
    return 0 if bound < at else (share if bound == at else 100)


def histogram(
    name: str, labels: Mapping[str, str], bounds: tuple[float, ...], at: float, minutes: int
) -> list[dict[str, str]]:
    """Cumulative bucket counters whose p99 over any window is exactly ``at``: per
    minute 99 observations up to ``at`` (all in its bucket) and one above it."""
    out = []
    for bound in (*bounds, math.inf):
        count = per_minute(bound, at, 99)
        le = "+Inf" if bound == math.inf else le_label(bound)
        out.append(series(f"{name}_bucket", {**labels, "le": le}, f"0+{count}x{minutes}"))
    out.append(series(f"{name}_count", labels, f"0+100x{minutes}"))
    return out


def le_label(bound: float) -> str:
    """The "le" label exactly as prometheus_client spells it."""
    text: str = floatToGoString(bound)  # type: ignore[no-untyped-call]
    return text


def bound_above(bounds: tuple[float, ...], threshold: float) -> float:
    """The lowest bound above ``threshold``: a quantile there is over it."""
    return next(b for b in bounds if b > threshold)


def bound_at_or_below(bounds: tuple[float, ...], threshold: float) -> float:
    """The highest bound at or below ``threshold``: a quantile there is not over it."""
    return max(b for b in bounds if b <= threshold)
