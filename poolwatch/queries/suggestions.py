"""Which ORM's model metadata explains a pool's queries, and the cached suggestion.

Each ``instrument_*`` call registers its pools here with the ORM that owns them, so a
finding on pool ``default`` is explained with Tortoise's models and one on ``main`` with
SQLAlchemy's, whether it was found by a PoolWatch or by ``testing.capture()``.
"""

from __future__ import annotations

from collections.abc import Callable

from poolwatch.queries.detect import Evidence
from poolwatch.queries.hints import Relation, relation_named, suggest

__all__ = ["register_pool", "relation_target", "suggestion"]

RelationSource = Callable[[], list[Relation]]

_pools: dict[str, tuple[str, RelationSource]] = {}
_cache: dict[Evidence, str] = {}
_targets: dict[tuple[str, str], str | None] = {}
_MAX_CACHED = 4096


def register_pool(pool: str, orm: str, relations: RelationSource) -> None:
    """Explain findings on ``pool`` with ``orm``'s ``relations()``."""
    _pools[pool] = (orm, relations)
    _cache.clear()  # a pool name now served by another ORM
    _targets.clear()


def _relations(
    pool: str, on_error: Callable[[BaseException], None] | None
) -> tuple[str | None, list[Relation]]:
    orm, source = _pools.get(pool, (None, None))
    if source is None:  # only the pool's own ORM's models explain its statements
        return orm, []
    try:
        return orm, source()
    except Exception as exc:  # models half-configured: a generic hint will do
        if on_error is not None:
            on_error(exc)
        return orm, []


def suggestion(evidence: Evidence, on_error: Callable[[BaseException], None] | None = None) -> str:
    """What to change for the finding ``evidence`` describes, worded with the models of
    the ORM that owns its pool.

    A relation is named when the ORM's loader named it, or when ``by_relation`` (the
    ORM's relation loader ran the statements) and the pool's own ORM has one that loads
    this shape.
    """
    text = _cache.get(evidence)
    if text is not None:
        return text
    orm, found = _relations(evidence.pool, on_error)
    text = suggest(evidence, found, orm)
    # Findings come from statements, so the ORM has loaded its models by now; reading
    # them again for every request of a loop would cost more than the detection.
    if len(_cache) >= _MAX_CACHED:
        _cache.clear()
    _cache[evidence] = text
    return text


def relation_target(
    pool: str, relation: str, on_error: Callable[[BaseException], None] | None = None
) -> str | None:
    """The model that ``relation`` (``Article.author``) loads, if the models of the ORM
    that owns ``pool`` have it: how a chain of relations is followed."""
    key = (pool, relation)
    if key in _targets:
        return _targets[key]
    _, found = _relations(pool, on_error)
    described = relation_named(relation, found)
    target = None if described is None else described.target
    if len(_targets) >= _MAX_CACHED:
        _targets.clear()
    _targets[key] = target
    return target
