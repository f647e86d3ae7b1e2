"""Settings: one frozen object, validated when it is made.

Values come from keyword arguments and, for whatever is not given, from ``POOLWATCH_*``
environment variables. The environment is read by :meth:`Settings.from_env` when a
:class:`~poolwatch.PoolWatch` is constructed, never at import time. A bad value raises
:class:`~poolwatch.ConfigError` naming the setting, the value and what is allowed.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

from poolwatch.errors import ConfigError

__all__ = ["Settings"]

_ENV_PREFIX = "POOLWATCH_"
_TRUE = frozenset({"1", "true", "yes", "on"})
_FALSE = frozenset({"0", "false", "no", "off"})


@dataclasses.dataclass(frozen=True, slots=True)
class Settings:
    """Everything poolwatch can be told.

    Attributes:
        enabled: master switch; when false, ``instrument_*`` calls do nothing.
        metrics_path: path the app serves Prometheus metrics on.
        expose_metrics: serve ``metrics_path`` on the app at all (off when another
            process or port exposes the registry).
        exclude_paths: request paths that are neither timed nor counted (health checks).
            The metrics path is always excluded.
        use_global_registry: register metrics in prometheus_client's global ``REGISTRY``
            instead of a registry of this PoolWatch's own.
    """

    enabled: bool = True
    metrics_path: str = "/metrics"
    expose_metrics: bool = True
    exclude_paths: tuple[str, ...] = ()
    use_global_registry: bool = False

    def __post_init__(self) -> None:
        _check_bool("enabled", self.enabled)
        _check_bool("expose_metrics", self.expose_metrics)
        _check_bool("use_global_registry", self.use_global_registry)
        _check_path("metrics_path", self.metrics_path)
        if isinstance(self.exclude_paths, str) or not isinstance(self.exclude_paths, tuple):
            raise ConfigError(
                "exclude_paths", self.exclude_paths, "must be a tuple of paths starting with '/'"
            )
        for path in self.exclude_paths:
            _check_path("exclude_paths", path)

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
        values: dict[str, Any] = {}
        for field in dataclasses.fields(cls):
            env_name = _ENV_PREFIX + field.name.upper()
            if field.name in overrides:
                value = overrides[field.name]
                if field.name == "exclude_paths" and isinstance(value, list):
                    value = tuple(value)
                values[field.name] = value
            elif env_name in environ:
                values[field.name] = _parse(env_name, environ[env_name], field.type)
        return cls(**values)


def _parse(name: str, raw: str, kind: object) -> object:
    text = raw.strip()
    if kind in (bool, "bool"):
        if text.lower() in _TRUE:
            return True
        if text.lower() in _FALSE:
            return False
        raise ConfigError(name, raw, f"must be one of {sorted(_TRUE | _FALSE)}")
    if kind in ("tuple[str, ...]",):
        return tuple(p.strip() for p in text.split(",") if p.strip())
    return text


def _check_bool(name: str, value: object) -> None:
    if not isinstance(value, bool):
        raise ConfigError(name, value, "must be True or False")


def _check_path(name: str, value: object) -> None:
    if not isinstance(value, str) or not value.startswith("/") or any(c.isspace() for c in value):
        raise ConfigError(name, value, "must be a URL path starting with '/' and without spaces")
