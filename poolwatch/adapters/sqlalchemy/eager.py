"""Eager loads nothing read (``unused_eager_load``), seen through SQLAlchemy's ORM.

Three seams, each paid for only where an eager load happened in a judged scope:

* **The request**: a ``do_orm_execute`` listener on :class:`~sqlalchemy.orm.Session` (one
  per process, while any engine is instrumented). Outside a scope it returns at once;
  inside one it reads the statement's loader options (:func:`eager_parts`) and, for a
  ``selectinload``/``joinedload``/``subqueryload``/``immediateload`` on an instrumented
  engine while the scope is judged, adds one load per relation of the option.
* **The rows**: an instance's ``load_options`` are the very option objects of the query
  that loaded it, carried to the rows its eager loaders loaded too (checked on 2.0 and
  2.1). A ``loaded_as_persistent`` listener on that one session (not the class) counts
  the rows each tracked option loaded, until the scope ends.
* **The reads**: reading a loaded relation is a plain ``__dict__`` hit with no event, so
  the relation's own ``InstrumentedAttribute`` (that one object, e.g. ``Article.author``)
  gets a subclass with a ``__get__`` that notes the read, for as long as some open scope
  tracks that relation (counted per relation); then its class is put back. The object
  stays the same (``Article.author`` in a query still is ``Article.author``); no other
  attribute, model or scope pays anything.

What counts as read: getting the attribute on a row the query loaded (``article.author``,
``article.tags``; iterating, ``len`` or indexing a collection all start there), by the
application or by FastAPI's serialization of a ``response_model`` (``from_attributes``,
``orm_mode``), which reads through the same attribute. SQLAlchemy's own loaders, flushes
and cascades work on the instance's state and are not reads. Rows that were already in
the session before the query (identity-map hits) are not counted as its rows, nor are
reads of them.

Every hook catches its own faults (counted as ``eager_loads``) and changes nothing the
ORM loads or returns. Private attributes are read by :func:`eager_parts` only.
"""

from __future__ import annotations

import threading
import weakref
from typing import Any

from sqlalchemy import event
from sqlalchemy.orm import InstrumentedAttribute, Session
from sqlalchemy.orm.attributes import instance_state

from poolwatch.context import current_scope
from poolwatch.queries.eager import SQLALCHEMY, EagerLoad, ScopeEagerLoads
from poolwatch.queries.eagerwatch import COMPONENT, EagerWatch
from poolwatch.safety import FaultReporter

__all__ = ["EAGER_LOADERS", "EagerHooks", "Part", "eager_parts", "loader_options"]

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


def option_parts(option: Any) -> list[Part]:
    """The eager parts of one loader option (a ``Load``), read from its ``context`` of
    ``_LoadElement`` s: each element's ``path`` and ``strategy`` (the one reader)."""
    elements = getattr(option, "context", None)
    if not elements:
        return []
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


class _WatchedAttribute(InstrumentedAttribute[Any]):
    """``InstrumentedAttribute`` noting reads of a relation some scope tracks."""

    __slots__ = ()

    def __get__(self, instance: object, owner: Any) -> Any:
        if instance is not None:
            work = current_scope()
            loads = None if work is None else work.eager
            if loads is not None:
                _note(loads, self.key, instance, read=True)
        return InstrumentedAttribute.__get__(self, instance, owner)


_faults: list[FaultReporter] = []  # the reporter of the first installed PoolWatch


def _note(loads: ScopeEagerLoads, key: str | None, instance: object, *, read: bool) -> None:
    """Mark the tracked loads of the query that loaded ``instance``: a read of ``key``
    (``read``), or one more row (``key`` None)."""
    try:
        by_token = loads.by_token
        if not by_token:
            return
        state = instance_state(instance)
        for option in state.load_options:
            tracked = by_token.get(_token(loads, state.session_id, option))
            if tracked is None:
                continue
            for load in tracked:
                if not isinstance(instance, load.owner):  # type: ignore[arg-type]
                    continue
                if read:
                    if load.attribute == key:
                        load.read = True
                else:
                    load.loaded += 1
    except Exception as exc:
        _report(exc)


def _token(loads: ScopeEagerLoads, session_id: object, option: object) -> int:
    """Which tracked loads rows carrying ``option`` belong to: the option's shape in that
    session. Not the option object itself: on a cached statement SQLAlchemy gives the rows
    the options of the statement first compiled, not those of the one executed."""
    shapes: dict[int, tuple[Any, ...]] = loads.adapter.setdefault("sqlalchemy.shapes", {})
    shape = shapes.get(id(option))
    if shape is None:
        shape = tuple((id(c), k, loader) for c, k, loader, *_ in option_parts(option))
        shapes[id(option)] = shape
        loads.holds.append(option)  # its id stays its own while the scope lasts
    return hash((session_id, shape))


def _report(exc: Exception, watch: EagerWatch | None = None) -> None:
    faults = watch.faults if watch is not None else (_faults[0] if _faults else None)
    if faults is not None:
        faults.report(COMPONENT, exc)


class EagerHooks:
    """The process's ``do_orm_execute`` listener, installed while any engine is
    instrumented, and the relations and sessions it watches."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        # Engines instrumented -> the EagerWatch of their PoolWatch and pool.
        self._watches: weakref.WeakKeyDictionary[Any, EagerWatch] = weakref.WeakKeyDictionary()
        # The same watches (a few): asked whether a scope is judged at all.
        self._judges: tuple[EagerWatch, ...] = ()
        self._installed = False
        # Relation attributes watched (by id: an attribute's == makes SQL), and by how
        # many open scopes.
        self._watched: dict[int, int] = {}

    def add(self, engine: Any, watch: EagerWatch) -> None:
        """Track eager loads of statements on ``engine`` (a sync Engine)."""
        with self._lock:
            self._watches[engine] = watch
            self._update_judges()
            if not _faults:
                _faults.append(watch.faults)
            if not self._installed:
                event.listen(Session, "do_orm_execute", self._on_execute)
                self._installed = True

    def remove(self, engine: Any, watch: EagerWatch) -> None:
        """Undo :meth:`add`; the listener comes off with the last engine."""
        with self._lock:
            if self._watches.get(engine) is watch:
                del self._watches[engine]
            self._update_judges()
            if self._installed and not self._watches:
                event.remove(Session, "do_orm_execute", self._on_execute)
                self._installed = False
                _faults.clear()

    def installed(self) -> bool:
        """Whether the ``do_orm_execute`` listener is in place."""
        return self._installed

    def _update_judges(self) -> None:
        self._judges = tuple(self._watches.values())

    # -- the request -----------------------------------------------------------------------

    def _on_execute(self, state: Any) -> None:
        # Every ORM statement runs this: the tests that let most of them go at once come
        # first, cheapest first (no scope; no option at all; no scope being judged).
        if current_scope() is None:
            return
        watch: EagerWatch | None = None
        try:
            if not loader_options(state.statement) or not self._judging():
                return
            if not state.is_select or state.is_relationship_load:
                return
            found = eager_parts(state.statement)
            if not found:
                return
            watch = self._watch_of(state)
            if watch is None:
                return
            loads = watch.loads()
            if loads is None:
                return
            self._track(state, found, watch, loads)
        except Exception as exc:
            _report(exc, watch)

    def _judging(self) -> bool:
        """Whether some PoolWatch judges the running code's scope (before finding which
        one the statement's engine belongs to, which costs more)."""
        return any(watch.judging() for watch in self._judges)

    def _watch_of(self, state: Any) -> EagerWatch | None:
        if not self._watches:
            return None
        try:
            bind = state.session.get_bind(**state.bind_arguments)
        except Exception:  # no bind for this statement: not an engine of ours
            return None
        return self._watches.get(getattr(bind, "engine", bind))

    def _track(
        self,
        state: Any,
        found: list[tuple[object, list[Part]]],
        watch: EagerWatch,
        loads: ScopeEagerLoads,
    ) -> None:
        site, path = watch.where(1)
        mapper = state.bind_mapper
        table = getattr(getattr(mapper, "local_table", None), "name", "") or ""
        for option, parts in found:
            made: list[EagerLoad] = []
            for cls, key, loader, whole, part, keep in parts:
                load = EagerLoad(
                    relation=f"{cls.__name__}.{key}",
                    option=whole,
                    loader=loader,
                    orm=SQLALCHEMY,
                    call_site=site,
                    call_path=path,
                    pool=watch.pool,
                    table=str(table).lower(),
                    part=part,
                    keep=keep,
                    owner=cls,
                )
                if not self._watch(cls, key, loads):
                    continue  # a read could not be seen: never judged unused
                if loads.add(load):
                    made.append(load)
            if made:
                loads.bind(_token(loads, state.session.hash_key, option), made)
        self._listen(state.session, loads)

    # -- the rows ----------------------------------------------------------------------

    def _listen(self, session: Session, loads: ScopeEagerLoads) -> None:
        sessions = loads.adapter.setdefault("sqlalchemy.sessions", weakref.WeakSet())
        if session in sessions:
            return
        sessions.add(session)

        def loaded(_session: Session, instance: object) -> None:
            work = current_scope()
            if work is not None and work.eager is loads:
                _note(loads, None, instance, read=False)

        event.listen(session, "loaded_as_persistent", loaded)
        ref = weakref.ref(session)

        def stop() -> None:
            live = ref()
            if live is not None and event.contains(live, "loaded_as_persistent", loaded):
                event.remove(live, "loaded_as_persistent", loaded)

        loads.releases.append(self._guarded(stop))

    # -- the reads ---------------------------------------------------------------------

    def _watch(self, cls: type, key: str, loads: ScopeEagerLoads) -> bool:
        """Watch reads of ``cls.key`` while ``loads``' scope lasts; False if it cannot be
        (an attribute class of the application's own)."""
        attribute = cls.__dict__.get(key)
        if not isinstance(attribute, InstrumentedAttribute) or type(attribute) not in (
            InstrumentedAttribute,
            _WatchedAttribute,
        ):
            return False
        watched: set[int] = loads.adapter.setdefault("sqlalchemy.watched", set())
        if id(attribute) in watched:
            return True
        with self._lock:
            count = self._watched.get(id(attribute), 0)
            if count == 0:
                attribute.__class__ = _WatchedAttribute
            self._watched[id(attribute)] = count + 1
        watched.add(id(attribute))
        loads.releases.append(self._guarded(lambda: self._unwatch(attribute)))
        return True

    def _unwatch(self, attribute: InstrumentedAttribute[Any]) -> None:
        with self._lock:
            count = self._watched.get(id(attribute), 0) - 1
            if count > 0:
                self._watched[id(attribute)] = count
                return
            self._watched.pop(id(attribute), None)
            if type(attribute) is _WatchedAttribute:
                attribute.__class__ = InstrumentedAttribute  # type: ignore[assignment]

    def watching(self) -> int:
        """How many relations are watched now (0 once every scope has ended)."""
        return len(self._watched)

    def _guarded(self, undo: Any) -> Any:
        def run() -> None:
            try:
                undo()
            except Exception as exc:
                _report(exc)

        return run


hooks = EagerHooks()
"""The process's hooks (SQLAlchemy's Session events are per class, so per process)."""
