"""Settings: one frozen object, validated when it is made.

Values come from keyword arguments and, for whatever is not given, from ``POOLWATCH_*``
environment variables. The environment is read by :meth:`Settings.from_env` when a
:class:`~poolwatch.PoolWatch` is constructed, never at import time. A bad value raises
:class:`~poolwatch.ConfigError` naming the setting, the value and what is allowed.
"""

from __future__ import annotations

import dataclasses
import difflib
import logging
import math
from collections.abc import Mapping
from types import MappingProxyType
from typing import Any

from poolwatch.errors import ConfigError

logger = logging.getLogger("poolwatch")

__all__ = ["ALLOWED", "Settings"]

_ENV_PREFIX = "POOLWATCH_"
_TRUE = frozenset({"1", "true", "yes", "on"})
_FALSE = frozenset({"0", "false", "no", "off"})
MODES = ("off", "log", "raise")

_BOOL = "`True` or `False`"
_PATH = "a URL path: starts with `/`, no spaces"
_PATTERNS = "a tuple of non-empty strings (shell-style patterns)"
_SECONDS = "seconds: a finite number"

# What each setting accepts, as Settings.__post_init__ enforces it, in words: the reference
# of the documentation shows it beside the setting (a test keeps one entry per field).
ALLOWED: Mapping[str, str] = MappingProxyType(
    {
        "enabled": _BOOL,
        "metrics_path": f"{_PATH}; not `findings_path` while both are served",
        "expose_metrics": _BOOL,
        "exclude_paths": "a tuple of URL paths, each starting with `/`, no spaces",
        "use_global_registry": _BOOL,
        "nplusone_mode": ", ".join(f"`{mode}`" for mode in MODES[:-1]) + f" or `{MODES[-1]}`",
        "nplusone_threshold": "a whole number, at least 2",
        "nplusone_min_duration": f"{_SECONDS}, at least 0",
        "duplicate_threshold": "a whole number, at least 2",
        "slow_query_threshold": f"{_SECONDS}, more than 0",
        "allow_routes": _PATTERNS,
        "allow_fingerprints": _PATTERNS,
        "allow_call_sites": _PATTERNS,
        "ignore_modules": "a tuple of non-empty strings (module name prefixes)",
        "findings_path": f"{_PATH}; not `metrics_path` while both are served",
        "expose_findings": _BOOL,
        "findings_log_interval": f"{_SECONDS}, at least 0",
        "metrics_bearer_token": "a non-empty string without spaces, or `None`; not "
        "together with `metrics_basic_auth`",
        "metrics_basic_auth": "`'user:password'` (the user not empty), or `None`; not "
        "together with `metrics_bearer_token`",
        "metrics_port": "a TCP port, 1 to 65535, or `None`",
        "metrics_host": "a host address, no spaces (IPv4 or IPv6, such as `::1`)",
        "exemplars": _BOOL,
        "acquire_timeout": f"{_SECONDS}, more than 0, or `None`",
        "leak_threshold": f"{_SECONDS}, more than 0, or `None`",
    }
)


@dataclasses.dataclass(frozen=True, slots=True)
class Settings:
    """Everything poolwatch can be told.

    Attributes:
        enabled: master switch; when false, ``instrument_*`` calls do nothing and no
            metric is registered anywhere.
        metrics_path: path the app serves Prometheus metrics on.
        expose_metrics: serve ``metrics_path`` on the app at all (off when another
            process or port exposes the registry).
        exclude_paths: request paths that are neither timed nor counted (health checks).
            The metrics path is always excluded.
        use_global_registry: register metrics in prometheus_client's global ``REGISTRY``
            instead of a registry of this PoolWatch's own.
        nplusone_mode: ``"off"`` (no findings at all), ``"log"`` (count, log and list
            them) or ``"raise"`` (also raise :class:`~poolwatch.NPlusOneError` when a
            request or scope ends with an N+1 or duplicate finding).
        nplusone_threshold: statements of one fingerprint from one call site that make
            an N+1 (or a bulk-write hint).
        nplusone_min_duration: seconds those statements must take together to count
            (0: fast loops are loops too).
        duplicate_threshold: identical statements (same parameters) that make a
            duplicate finding.
        slow_query_threshold: seconds after which one statement is a slow query.
        allow_routes, allow_fingerprints, allow_call_sites: shell-style patterns of
            findings never to report (``"/admin/*"``, ``"select ... from audit*"``,
            ``"*/reports.py:*"``).
        ignore_modules: module prefixes to skip, like the ORM's, when looking for the
            call site (an application's own data-access layer).
        findings_path: path serving the recent findings as JSON.
        expose_findings: serve ``findings_path`` at all.
        findings_log_interval: seconds between two log lines about the same fingerprint.
        metrics_bearer_token: require ``Authorization: Bearer <token>`` on poolwatch's
            paths.
        metrics_basic_auth: require HTTP basic auth, given as ``"user:password"``.
        metrics_port: serve poolwatch's paths on this port, from a small server of their
            own, and not on the app's port.
        metrics_host: the address that server binds (loopback unless told otherwise).
        exemplars: attach the request's trace id to its observations (OpenMetrics).
        acquire_timeout: seconds a request may wait for a pooled connection before
            :class:`~poolwatch.PoolTimeoutError` (``None``: the driver's own behaviour;
            Tortoise waits forever).
        leak_threshold: seconds a connection may stay checked out before one warning
            names the line that took it and ``poolwatch_connection_leaks_total`` counts
            it (``None``: no leak detection).
    """

    enabled: bool = True
    metrics_path: str = "/metrics"
    expose_metrics: bool = True
    exclude_paths: tuple[str, ...] = ()
    use_global_registry: bool = False
    nplusone_mode: str = "log"
    nplusone_threshold: int = 5
    nplusone_min_duration: float = 0.0
    duplicate_threshold: int = 2
    slow_query_threshold: float = 0.5
    allow_routes: tuple[str, ...] = ()
    allow_fingerprints: tuple[str, ...] = ()
    allow_call_sites: tuple[str, ...] = ()
    ignore_modules: tuple[str, ...] = ()
    findings_path: str = "/poolwatch/findings"
    expose_findings: bool = True
    findings_log_interval: float = 60.0
    metrics_bearer_token: str | None = dataclasses.field(default=None, repr=False)
    metrics_basic_auth: str | None = dataclasses.field(default=None, repr=False)
    metrics_port: int | None = None
    metrics_host: str = "127.0.0.1"
    exemplars: bool = True
    acquire_timeout: float | None = None
    leak_threshold: float | None = None

    def __post_init__(self) -> None:
        for name in (
            "enabled",
            "expose_metrics",
            "use_global_registry",
            "expose_findings",
            "exemplars",
        ):
            _check_bool(name, getattr(self, name))
        _check_path("metrics_path", self.metrics_path)
        _check_path("findings_path", self.findings_path)
        if self.findings_path == self.metrics_path and self.expose_metrics and self.expose_findings:
            raise ConfigError("findings_path", self.findings_path, "must differ from metrics_path")
        _check_strings("exclude_paths", self.exclude_paths)
        for path in self.exclude_paths:
            _check_path("exclude_paths", path)
        for name in ("allow_routes", "allow_fingerprints", "allow_call_sites", "ignore_modules"):
            _check_strings(name, getattr(self, name))
        if self.nplusone_mode not in MODES:
            raise ConfigError("nplusone_mode", self.nplusone_mode, f"must be one of {MODES}")
        _check_number("nplusone_threshold", self.nplusone_threshold, int, minimum=2)
        _check_number("duplicate_threshold", self.duplicate_threshold, int, minimum=2)
        _check_number("nplusone_min_duration", self.nplusone_min_duration, float, minimum=0)
        _check_number("findings_log_interval", self.findings_log_interval, float, minimum=0)
        _check_number("slow_query_threshold", self.slow_query_threshold, float, minimum=0)
        self._check_exposition()
        for name in ("acquire_timeout", "leak_threshold"):
            value = getattr(self, name)
            if value is not None:
                _check_number(name, value, float, minimum=0)
                if value <= 0:
                    raise ConfigError(name, value, "must be more than 0 seconds, or None")
        if self.slow_query_threshold <= 0:
            raise ConfigError(
                "slow_query_threshold", self.slow_query_threshold, "must be more than 0 seconds"
            )

    def _check_exposition(self) -> None:
        token, basic = self.metrics_bearer_token, self.metrics_basic_auth
        if token is not None and (not isinstance(token, str) or not token or _spaced(token)):
            raise ConfigError(
                "metrics_bearer_token", "***", "must be a non-empty string without spaces"
            )
        if basic is not None and (not isinstance(basic, str) or ":" not in basic[1:]):
            raise ConfigError("metrics_basic_auth", "***", "must be 'user:password'")
        if token is not None and basic is not None:
            raise ConfigError(
                "metrics_basic_auth", "***", "cannot be combined with metrics_bearer_token"
            )
        port = self.metrics_port
        if port is not None and (
            isinstance(port, bool) or not isinstance(port, int) or not 0 < port < 65536
        ):
            raise ConfigError("metrics_port", port, "must be a TCP port, 1 to 65535")
        if (
            not isinstance(self.metrics_host, str)
            or not self.metrics_host
            or _spaced(self.metrics_host)
        ):
            raise ConfigError("metrics_host", self.metrics_host, "must be a host address")

    @classmethod
    def from_env(cls, environ: Mapping[str, str], **overrides: Any) -> Settings:
        """Build settings from ``POOLWATCH_*`` variables in ``environ``; ``overrides`` win.

        >>> Settings.from_env({"POOLWATCH_METRICS_PATH": "/m"}).metrics_path
        '/m'
        """
        names = {f.name for f in dataclasses.fields(cls)}
        for key, value in overrides.items():
            if key not in names:
                raise ConfigError(key, value, f"unknown setting; known: {sorted(names)}")
        _warn_unknown(environ, names)
        values: dict[str, Any] = {}
        for field in dataclasses.fields(cls):
            env_name = _ENV_PREFIX + field.name.upper()
            if field.name in overrides:
                value = overrides[field.name]
                if isinstance(value, list) and field.type == "tuple[str, ...]":
                    value = tuple(value)
                values[field.name] = value
            elif env_name in environ:
                values[field.name] = _parse(env_name, environ[env_name], field.type)
        return cls(**values)


# Variables poolwatch itself reads besides the settings: its test suite's servers.
_OTHER_VARIABLES = ("POOLWATCH_TEST_",)
_warned: set[str] = set()


def _warn_unknown(environ: Mapping[str, str], names: set[str]) -> None:
    """One warning per process for each ``POOLWATCH_*`` variable that is no setting.

    A misspelt variable (``POOLWATCH_ACQUIRE_TIMOUT``) is otherwise silently ignored.
    """
    known = {_ENV_PREFIX + name.upper() for name in names}
    for key in environ:
        if (
            not key.startswith(_ENV_PREFIX)
            or key in known
            or key in _warned
            or key.startswith(_OTHER_VARIABLES)
        ):
            continue
        _warned.add(key)
        close = difflib.get_close_matches(key, known, n=1, cutoff=0.6)
        logger.warning(
            "%s is not a poolwatch setting and is ignored%s",
            key,
            f"; did you mean {close[0]}?" if close else f" (settings: {_ENV_PREFIX}<NAME>)",
        )


def _parse(name: str, raw: str, kind: object) -> object:
    text = raw.strip()
    if kind in (bool, "bool"):
        if text.lower() in _TRUE:
            return True
        if text.lower() in _FALSE:
            return False
        raise ConfigError(name, raw, f"must be one of {sorted(_TRUE | _FALSE)}")
    if kind == "tuple[str, ...]":
        return tuple(p.strip() for p in text.split(",") if p.strip())
    if kind in ("float | None", "int | None") and text.lower() in ("", "none", "off"):
        return None
    if kind in ("int", "float", "int | None", "float | None"):
        try:
            return float(text) if kind in ("float", "float | None") else int(text)
        except ValueError:
            shown = "***" if "TOKEN" in name or "AUTH" in name else raw
            raise ConfigError(name, shown, f"must be a number ({kind})") from None
    return text


def _spaced(text: str) -> bool:
    return any(c.isspace() for c in text)


def _check_bool(name: str, value: object) -> None:
    if not isinstance(value, bool):
        raise ConfigError(name, value, "must be True or False")


def _check_strings(name: str, value: object) -> None:
    if not isinstance(value, tuple) or not all(isinstance(v, str) and v for v in value):
        raise ConfigError(name, value, "must be a tuple of non-empty strings")


def _check_number(name: str, value: object, kind: type, *, minimum: float) -> None:
    # bool is an int to Python, never a count or a duration here
    if isinstance(value, bool) or not isinstance(value, (int, float) if kind is float else int):
        raise ConfigError(name, value, f"must be a number ({kind.__name__})")
    if math.isnan(value) or math.isinf(value):
        # "inf" parses as a float, but no setting means "never": None does (or "off").
        raise ConfigError(name, value, "must be a finite number (None or 'off' for no limit)")
    if value < minimum:
        raise ConfigError(name, value, f"must be at least {minimum}")


def _check_path(name: str, value: object) -> None:
    if not isinstance(value, str) or not value.startswith("/") or any(c.isspace() for c in value):
        raise ConfigError(name, value, "must be a URL path starting with '/' and without spaces")
