"""Exceptions poolwatch raises. Each subclasses the builtin it refines."""

from __future__ import annotations

__all__ = ["ConfigError", "PoolWatchError"]


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
