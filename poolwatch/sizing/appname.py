"""The tag that marks an autosized pool's connections on PostgreSQL.

Each such pool gets a random tag, ``pw-`` and 8 hex digits, at the end of its
connections' ``application_name``, the one thing a client sets that every role can read
from ``pg_stat_activity``: the database budget (:mod:`poolwatch.sizing.budget`) counts there how
many pools share the database and what each holds. The name the application chose stays
in front (shortened if the two would pass PostgreSQL's 63 bytes), so a DBA still sees
it.
"""

from __future__ import annotations

import os
import secrets
from typing import Any

__all__ = ["MAX_LENGTH", "new_tag", "tag_server_settings", "tagged_name"]

MAX_LENGTH = 63  # NAMEDATALEN - 1: PostgreSQL cuts longer names


def new_tag() -> str:
    """A fresh tag: ``pw-`` and 8 hex digits."""
    return f"pw-{secrets.token_hex(4)}"


def tagged_name(tag: str, name: object = None) -> str:
    """``name`` (or ``PGAPPNAME``, as libpq would use), then ``tag``, within 63 bytes.

    A name that already ends with a tag (a pool created again) has it replaced.
    """
    base = name if isinstance(name, str) and name else os.environ.get("PGAPPNAME", "")
    head, _, last = base.rpartition(" ")
    if _is_tag(last):
        base = head
    # Only printable ASCII survives in application_name; the rest becomes '?'.
    base = base.encode("ascii", "replace").decode()[: MAX_LENGTH - len(tag) - 1].rstrip()
    return f"{base} {tag}" if base else tag


def tag_server_settings(connect_kwargs: dict[str, Any], tag: str) -> None:
    """Tag the ``application_name`` among asyncpg's ``server_settings`` in the keywords
    of its ``connect()`` (or ``create_pool()``), copying the dict the caller passed."""
    settings = dict(connect_kwargs.get("server_settings") or {})
    settings["application_name"] = tagged_name(tag, settings.get("application_name"))
    connect_kwargs["server_settings"] = settings


def _is_tag(word: str) -> bool:
    digits = word.removeprefix("pw-")
    return len(word) == 11 and len(digits) == 8 and all(c in _HEX for c in digits)


_HEX = frozenset("0123456789abcdef")
