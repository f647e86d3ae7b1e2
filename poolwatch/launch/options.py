"""The settings ``poolwatch run`` offers as options, and the ``POOLWATCH_*`` variables
they become in the command's environment (where any :class:`~poolwatch.Settings` field
can be set as ``POOLWATCH_<NAME>`` too). Standard library only.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import NamedTuple

__all__ = ["OPTIONS", "Option", "environment_of", "variable"]


class Option(NamedTuple):
    """One setting as a ``poolwatch run`` option."""

    flag: str
    setting: str
    metavar: str
    help: str
    choices: tuple[str, ...] | None = None


def variable(setting: str) -> str:
    """The environment variable of a setting: ``metrics_port`` -> ``POOLWATCH_METRICS_PORT``."""
    return f"POOLWATCH_{setting.upper()}"


OPTIONS: tuple[Option, ...] = (
    Option("--metrics-path", "metrics_path", "PATH", "where the app's port serves the metrics"),
    Option(
        "--metrics-port",
        "metrics_port",
        "PORT",
        "serve poolwatch's paths on this port instead of the app's (any worker serves the "
        "sum of all)",
    ),
    Option("--metrics-host", "metrics_host", "HOST", "address --metrics-port binds"),
    Option(
        "--exclude-paths",
        "exclude_paths",
        "PATHS",
        "comma-separated request paths neither timed nor counted (health checks)",
    ),
    Option(
        "--nplusone-mode",
        "nplusone_mode",
        "MODE",
        "what an N+1 or duplicate query does",
        ("off", "log", "raise"),
    ),
    Option(
        "--slow-query-threshold",
        "slow_query_threshold",
        "SECONDS",
        "a statement slower than this is a slow-query finding",
    ),
    Option(
        "--acquire-timeout",
        "acquire_timeout",
        "SECONDS",
        "longest wait for a pooled connection before PoolTimeoutError",
    ),
    Option(
        "--leak-threshold",
        "leak_threshold",
        "SECONDS",
        "warn about a connection held longer than this",
    ),
)


def environment_of(values: Mapping[str, str | None]) -> dict[str, str]:
    """The variables the given options set (``values``: setting -> text, None when the
    option was not given)."""
    return {variable(setting): text for setting, text in values.items() if text is not None}
