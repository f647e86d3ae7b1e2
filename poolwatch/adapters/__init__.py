"""Adapters: the only modules that touch an ORM's or driver's internals."""

from __future__ import annotations

__all__ = ["major_minor"]


def major_minor(version: str) -> tuple[int, int]:
    """``(major, minor)`` of a version string such as ``"0.32.0"`` or ``"2.1.0b1"``."""
    major, minor = (int(part) for part in version.split(".")[:2])
    return major, minor
