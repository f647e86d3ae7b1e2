"""Which ORM's model metadata explains a pool's queries, and the cached suggestion.

Each ``instrument_*`` call registers its pools here with the ORM that owns them, so a
finding on pool ``default`` is explained with Tortoise's models and one on ``main`` with
SQLAlchemy's, whether it was found by a PoolWatch or by ``testing.capture()``.
"""

from __future__ import annotations

from collections.abc import Callable

from poolwatch.queries.hints import Relation, suggest

__all__ = ["register_pool", "suggestion"]

RelationSource = Callable[[], list[Relation]]

_pools: dict[str, tuple[str, RelationSource]] = {}
_cache: dict[tuple[str, str, str, bool], str] = {}
_MAX_CACHED = 4096


def register_pool(pool: str, orm: str, relations: RelationSource) -> None:
    """Explain findings on ``pool`` with ``orm``'s ``relations()``."""
    _pools[pool] = (orm, relations)
    _cache.clear()  # a pool name now served by another ORM


def suggestion(
    kind: str,
    fingerprint: str,
    pool: str,
    by_relation: bool = False,
    on_error: Callable[[BaseException], None] | None = None,
) -> str:
    """What to change for a finding of ``kind`` on ``fingerprint`` in ``pool``.

    A relation is named only when ``by_relation`` (the ORM's relation loader ran the
    statements) and the pool's own ORM has one that loads this shape.
    """
    key = (kind, fingerprint, pool, by_relation)
    text = _cache.get(key)
    if text is not None:
        return text
    orm, source = _pools.get(pool, (None, None))
    found: list[Relation] = []
    if source is not None:  # only the pool's own ORM's models explain its statements
        try:
            found = source()
        except Exception as exc:  # models half-configured: a generic hint will do
            if on_error is not None:
                on_error(exc)
    text = suggest(kind, fingerprint, found, orm, by_relation=by_relation)
    # Findings come from statements, so the ORM has loaded its models by now; reading
    # them again for every request of a loop would cost more than the detection.
    if len(_cache) >= _MAX_CACHED:
        _cache.clear()
    _cache[key] = text
    return text
