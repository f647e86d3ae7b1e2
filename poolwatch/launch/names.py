"""Pool names for the engines ``poolwatch run`` instruments: what their users call them.

An engine's ``logging_name`` if it has one, else the database in its URL (a SQLite file's
stem; ``sqlite`` for an in-memory one, the backend's name when the URL names no
database); ``--pool-name`` renames them (:class:`PoolNames`), and a name already taken
gets ``-2``, ``-3`` ... (:func:`candidates`). Standard library only: engines are read
through the attributes SQLAlchemy documents.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import PurePosixPath
from typing import Any

__all__ = ["PoolNames", "base_name", "candidates", "engine_name"]

_MEMORY = ("", ":memory:")


def base_name(backend: str, database: str | None) -> str:
    """The name a URL's database gives its pool.

    >>> base_name("postgresql", "shop"), base_name("sqlite", "/srv/data/shop.db")
    ('shop', 'shop')
    >>> base_name("sqlite", ":memory:"), base_name("mssql", None)
    ('sqlite', 'mssql')
    """
    database = (database or "").strip()
    if backend == "sqlite":
        # "file:shop.db?mode=ro" with uri=true; "file::memory:" is memory too.
        path = database.removeprefix("file:").partition("?")[0]
        if path in _MEMORY or path.startswith(":memory:") or "mode=memory" in database:
            return backend
        return PurePosixPath(path).stem or backend
    return database or backend


def engine_name(engine: Any) -> str:
    """The name of a SQLAlchemy engine's pool (an ``AsyncEngine``'s too)."""
    engine = getattr(engine, "sync_engine", engine)
    logging_name = getattr(engine, "logging_name", None)
    if isinstance(logging_name, str) and logging_name:
        return logging_name
    url = engine.url
    return base_name(url.get_backend_name(), url.database)


def candidates(name: str) -> Iterator[str]:
    """``name``, then ``name-2``, ``name-3`` ... for a name already taken."""
    yield name
    for number in itertools.count(2):
        yield f"{name}-{number}"


@dataclass(frozen=True)
class PoolNames:
    """What ``--pool-name`` says: ``NAME`` names every engine's pool (the second one
    ``NAME-2``), ``FOUND=NAME`` renames the pool otherwise called ``FOUND``.

    >>> names = PoolNames.parse("shop=main")
    >>> names.rename("shop"), names.rename("audit")
    ('main', 'audit')
    """

    default: str | None = None
    renamed: Mapping[str, str] = field(default_factory=dict)

    @classmethod
    def parse(cls, text: str) -> PoolNames:
        """From the comma-separated form (``main`` or ``shop=main,audit=log``); raises
        ``ValueError`` naming the entry it cannot read."""
        default: str | None = None
        renamed: dict[str, str] = {}
        for entry in (part.strip() for part in text.split(",")):
            if not entry:
                continue
            found, equals, name = (s.strip() for s in entry.partition("="))
            if not equals:
                if default is not None:
                    raise ValueError(f"{entry!r}: one pool name for every engine at most")
                default = found
            elif found and name:
                renamed[found] = name
            else:
                raise ValueError(f"{entry!r}: expected NAME or FOUND=NAME")
        return cls(default, renamed)

    def rename(self, found: str) -> str:
        """The name the pool found as ``found`` gets."""
        return self.renamed.get(found) or self.default or found

    def __str__(self) -> str:
        parts = [self.default] if self.default else []
        return ",".join(parts + [f"{k}={v}" for k, v in self.renamed.items()])
