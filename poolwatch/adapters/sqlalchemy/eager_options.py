"""The eager loads a SQLAlchemy statement asks for, read from its loader options.

:func:`eager_parts` reads a statement's ``selectinload``, ``joinedload``,
``subqueryload`` and ``immediateload`` options into :data:`Part` s, one per relation (a
chained option gives one per link, with the chain before it), for :mod:`.eager` to track
and judge; :func:`load_path` reads whether a statement is a relationship load and the
path of the relation it loads. Loader options and load paths offer no public reading
cheap enough for every statement: this module is the one place that reads SQLAlchemy's
private attributes for them, in :func:`eager_parts`, the :func:`option_parts` it reads
each option with, :func:`load_path` and :func:`refreshes` (tested on 2.0 and 2.1, and by
tests that fail if they move).

An application builds its options anew for every query, from the same few: each shape
of option is parsed once, and :func:`option_shape` (what tells two options apart for
rows and reads) is kept beside it, both forgotten together past :data:`_MAX_PARSED`.

Imports nothing, SQLAlchemy included: it reads the option objects it is handed.
"""

from __future__ import annotations

from typing import Any

__all__ = [
    "EAGER_LOADERS",
    "Part",
    "eager_parts",
    "load_path",
    "loaded_relation",
    "loader_options",
    "option_parts",
    "option_shape",
    "refreshes",
]

# The loader strategies that load a relation up front, by the option that asks for each.
EAGER_LOADERS = {
    "selectin": "selectinload",
    "joined": "joinedload",
    "subquery": "subqueryload",
    "immediate": "immediateload",
}

Part = tuple[type, str, str, str, str, str]
"""One eager relation of an option: (parent class, attribute, loader, the option's text,
this part's text where it is a later part of a chain, the chain before it)."""


def loader_options(statement: Any) -> tuple[Any, ...]:
    """A statement's options (``_with_options``): empty for most, which is all the
    ``do_orm_execute`` listener asks of them."""
    return getattr(statement, "_with_options", None) or ()


def load_path(statement: Any) -> tuple[Any, ...]:
    """The loader path of a relationship load's statement (``selectinload``'s,
    ``subqueryload``'s, an ``immediateload``'s or a lazy load's): mapper or alias,
    relationship, ... as ``ORMExecuteState.loader_strategy_path`` gives it, read from the
    statement's ``_compile_options._current_path`` directly (that property's reading
    costs several calls, on every statement with options); empty for any other
    statement."""
    path = getattr(getattr(statement, "_compile_options", None), "_current_path", None)
    return getattr(path, "path", None) or ()


def refreshes(statement: Any) -> bool:
    """Whether a statement loads an existing row's expired or deferred columns again
    (``ORMExecuteState.is_column_load``, read where :func:`load_path` reads): below a
    relation, its load path is the relation's, but it loads no relation."""
    return bool(getattr(getattr(statement, "_compile_options", None), "_for_refresh_state", False))


def loaded_relation(chain: tuple[Any, ...]) -> tuple[type, str] | None:
    """The relation (parent class, attribute) a relationship load's :func:`load_path`
    ends at; None for a path that does not end at a relationship (a polymorphic load's)."""
    if len(chain) < 2:
        return None
    prop, entity = chain[-1], chain[-2]
    key, cls = getattr(prop, "key", None), getattr(entity, "class_", None)
    if not getattr(prop, "is_property", False) or not isinstance(key, str):
        return None
    return (cls, key) if isinstance(cls, type) else None


def eager_parts(statement: Any) -> list[tuple[object, list[Part]]]:
    """The eager loads a statement's options ask for: each option object with its parts.

    The one function reading SQLAlchemy's private attributes for this (tested on 2.0 and
    2.1, and by a test that fails if they move): the statement's ``_with_options``, and
    each ``Load``'s ``context`` of ``_LoadElement`` s, with their ``path`` (mapper,
    relationship, mapper, ...) and ``strategy`` (``(("lazy", "selectin"),)``). Loader
    options offer no public reading. ``contains_eager`` (a join the query wrote itself)
    and wildcard options are left out.
    """
    options = loader_options(statement)
    if not options:
        return []
    found: list[tuple[object, list[Part]]] = []
    for option in options:
        parts = option_parts(option)
        if parts:
            found.append((option, parts))
    return found


# An option's elements' (path, strategy, aliased) -> its parts, parsed once: an app builds
# its options anew for every query, from the same few. A path is keyed by what it holds
# (``path.path``: mappers and relationships, which live as long as the mappings, hashed by
# identity), the PathRegistry object being new with every option.
_parsed: dict[tuple[object, ...], list[Part]] = {}
_MAX_PARSED = 1024


def option_parts(option: Any) -> list[Part]:
    """The eager parts of one loader option (a ``Load``), read from its ``context`` of
    ``_LoadElement`` s: each element's ``path`` and ``strategy`` (the one reader). The
    list is shared by options of one shape: not to be changed."""
    elements = getattr(option, "context", None)
    if not elements:
        return []
    key: list[object] = []
    for element in elements:
        path = getattr(element, "path", None)
        chain = getattr(path, "path", None)
        if chain is None and path is not None:  # not a PathRegistry: nothing to key by
            return _parse(elements)
        key.append(chain)
        key.append(getattr(element, "strategy", None))
        key.append("eager_from_alias" in (getattr(element, "local_opts", None) or {}))
    try:
        known = _parsed.get(tuple(key))
    except TypeError:  # a strategy that cannot be hashed: parsed every time
        return _parse(elements)
    if known is None:
        if len(_parsed) >= _MAX_PARSED:
            _parsed.clear()
            _shapes.clear()
        known = _parsed[tuple(key)] = _parse(elements)
    return known


# id(parts) -> (parts, their shape): the parts are option_parts' shared lists
_shapes: dict[int, tuple[list[Part], tuple[object, ...]]] = {}


def option_shape(parts: list[Part]) -> tuple[object, ...]:
    """What tells two options apart for rows and reads: each part's class, attribute and
    loader."""
    known = _shapes.get(id(parts))
    if known is not None and known[0] is parts:
        return known[1]
    shape = tuple((id(c), k, loader) for c, k, loader, *_ in parts)
    if len(_shapes) >= _MAX_PARSED:
        _shapes.clear()
    _shapes[id(parts)] = (parts, shape)
    return shape


def _parse(elements: Any) -> list[Part]:
    parts: list[Part] = []
    written: list[str] = []
    for element in elements:
        strategy = getattr(element, "strategy", None)
        path = getattr(element, "path", None)
        if not strategy or path is None or len(path) < 3:
            written.append("")
            continue
        loader = EAGER_LOADERS.get(dict(strategy).get("lazy", ""))
        local = getattr(element, "local_opts", None) or {}
        prop, parent = path[-2], path[-3]
        key = getattr(prop, "key", None)
        cls = getattr(parent, "class_", None)
        if loader is None or "eager_from_alias" in local or not key or cls is None:
            written.append(f"defaultload({cls.__name__ if cls else '?'}.{key})")
            continue
        text = f"{loader}({cls.__name__}.{key})"
        before = ".".join(w for w in written if w)
        parts.append((cls, key, loader, "", f".{text}" if written else "", before))
        written.append(text)
    whole = ".".join(w for w in written if w)
    return [(c, k, loader, whole, part, keep) for c, k, loader, _, part, keep in parts]
