"""Go template functions, for the expected annotations.

promtool renders an alert's annotations with Prometheus's template functions; a unit test
states the text it must render, so the builder formats values as they do.
"""

from __future__ import annotations

__all__ = ["humanize_duration", "humanize_percentage"]


def humanize_percentage(value: float) -> str:
    """``{{ $value | humanizePercentage }}``: 0.956 is ``95.6%``."""
    return f"{_g4(value * 100)}%"


def humanize_duration(value: float) -> str:
    """``{{ $value | humanizeDuration }}``: 0.25 is ``250ms``, 480 is ``8m 0s``."""
    if value >= 60:  # whole seconds, in days, hours and minutes as Go's template does
        whole = int(value)
        days, hours = whole // 86400, whole // 3600 % 24
        minutes, secs = whole // 60 % 60, whole % 60
        if days:
            return f"{days}d {hours}h {minutes}m {secs}s"
        if hours:
            return f"{hours}h {minutes}m {secs}s"
        return f"{minutes}m {secs}s"
    if value >= 1:
        return f"{_g4(value)}s"
    prefix = ""
    for candidate in ("m", "u", "n"):
        if value >= 1 or value == 0:
            break
        prefix, value = candidate, value * 1000
    return f"{_g4(value)}{prefix}s"


def _g4(value: float) -> str:
    return f"{value:.4g}"
