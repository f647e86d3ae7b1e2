"""Eager loads nothing read (``unused_eager_load``), seen through SQLAlchemy's ORM.

Three seams, each paid for only where an eager load happened in a judged scope:

* **The request**: a ``do_orm_execute`` listener on :class:`~sqlalchemy.orm.Session` (one
  per process, while any engine is instrumented). Outside a scope it returns at once;
  inside one it reads the statement's loader options (:mod:`.eager_options`) and, for a
  ``selectinload``/``joinedload``/``subqueryload``/``immediateload`` on an instrumented
  engine while the scope is judged, adds one load per relation of the option.
* **The loading**: a relation loaded by its own statement (``selectinload``,
  ``subqueryload``, ``immediateload``) loaded something when that statement runs: SQLAlchemy
  sends one only for parent rows the query loaded. The statement carries the query's
  options and says which relation it loads (its loader path), so the same listener counts
  it for the tracked load, with no per-row cost. A ``joinedload`` sends none: its rows are
  counted one by one, by a ``loaded_as_persistent`` listener on that one session (not the
  class), only while the scope tracks a joined load there. Either way, a row's (an
  instance's) ``load_options`` are the very option objects of the query that loaded it,
  carried to the rows its eager loaders loaded too (checked on 2.0 and 2.1).
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
ORM loads or returns. Private attributes are read in :mod:`.eager_options` only.
"""

from __future__ import annotations

import threading
import weakref
from typing import Any

from sqlalchemy import event
from sqlalchemy.orm import InstrumentedAttribute, Session
from sqlalchemy.orm.attributes import instance_state

from poolwatch.adapters.sqlalchemy.eager_options import (
    Part,
    eager_parts,
    load_path,
    loaded_relation,
    loader_options,
    option_parts,
    option_shape,
    refreshes,
)
from poolwatch.context import current_scope
from poolwatch.queries.eager import SQLALCHEMY, EagerLoad, ScopeEagerLoads
from poolwatch.queries.eagerwatch import COMPONENT, EagerWatch
from poolwatch.safety import FaultReporter

__all__ = ["EagerHooks"]


class _WatchedAttribute(InstrumentedAttribute[Any]):
    """``InstrumentedAttribute`` noting reads of a relation some scope tracks."""

    __slots__ = ()

    def __get__(self, instance: object, owner: Any) -> Any:
        if instance is not None:
            work = current_scope()
            loads = None if work is None else work.eager
            if loads is not None:
                _read(loads, self.key, instance)
        return InstrumentedAttribute.__get__(self, instance, owner)


_faults: list[FaultReporter] = []  # the reporter of the first installed PoolWatch


class _Part:
    """The tracked loads of one relation (parent class and attribute) under one option
    shape in one session, in the order they were tracked.

    Rows, relationship loads and reads come in without saying which execution of the
    query they belong to (see :func:`_token`), so each one counts for every load tracked
    so far: rather than touching every load each time, the part counts them and
    remembers how many loads a read reached, and :meth:`settle` hands each load its share
    when the scope is judged.
    """

    __slots__ = ("bases", "joined", "key", "loads", "owner", "read_upto", "rows")

    def __init__(self, owner: type, key: str, *, joined: bool) -> None:
        self.owner = owner
        self.key = key
        self.joined = joined  # counted by rows; the others by their loads' statements
        self.loads: list[EagerLoad] = []
        self.bases: list[int] = []  # rows counted when each load was tracked
        self.rows = 0  # rows of a joined load, or statements of the others
        self.read_upto = 0  # the loads tracked when the relation was last read

    def add(self, load: EagerLoad) -> None:
        self.loads.append(load)
        self.bases.append(self.rows)

    def settle(self) -> None:
        """Give each load the rows counted since it was tracked, and its read."""
        for index, load in enumerate(self.loads):
            load.loaded += self.rows - self.bases[index]
            self.bases[index] = self.rows
            if index < self.read_upto:
                load.read = True


_Parts = dict[tuple[type, str], _Part]  # a token's parts, by (class, attribute)


class _Rows:
    """A scope's tracked relations, as rows, relationship loads and reads find them: by
    session and option object (cached), then by the option's token, then by the row's
    class or the relation loaded."""

    __slots__ = ("loading", "options", "parts", "tables", "types")

    def __init__(self) -> None:
        # session id -> id(option) -> its token's parts, or None
        self.options: dict[object, dict[int, _Parts | None]] = {}
        self.parts: dict[int, _Parts] = {}  # token -> parts
        # (token, a row's class) -> the parts a row of that class is a parent in
        self.types: dict[tuple[int, type], list[_Part]] = {}
        # (session id, its options' ids, its path's last two ids) -> the part a
        # relationship load counts for, or None
        self.loading: dict[tuple[object, tuple[int, ...], int, int], _Part | None] = {}
        self.tables: dict[object, str] = {}  # mapper -> its table's name, lowercase

    def parts_of(self, session_id: object, parts: list[Part]) -> _Parts:
        """The tracked parts of an option with ``parts`` in a session (made empty)."""
        token = _session_token(session_id, parts)
        tracked = self.parts.get(token)
        if tracked is None:
            tracked = self.parts[token] = {}
            self.changed()
        return tracked

    def changed(self) -> None:
        """A token or part was added: what rows and loads found none for looks again."""
        for by_option in self.options.values():
            by_option.clear()
        self.types.clear()
        self.loading.clear()

    def table(self, mapper: Any) -> str:
        """The name of ``mapper``'s table, lowercase ("" if it has none)."""
        name = self.tables.get(mapper)
        if name is None:
            table = getattr(mapper, "local_table", None)
            name = self.tables[mapper] = str(getattr(table, "name", "") or "").lower()
        return name

    def settle(self) -> None:
        for parts in self.parts.values():
            for part in parts.values():
                part.settle()


def _rows(loads: ScopeEagerLoads) -> _Rows:
    rows: _Rows | None = loads.adapter.get("sqlalchemy.rows")
    if rows is None:
        rows = loads.adapter["sqlalchemy.rows"] = _Rows()
        loads.settles.append(rows.settle)
    return rows


def _read(loads: ScopeEagerLoads, key: str, instance: object) -> None:
    """Mark a read of ``key`` on ``instance`` for the tracked loads of its query."""
    try:
        _note(loads, key, instance_state(instance))
    except Exception as exc:
        _report(exc)


def _note(loads: ScopeEagerLoads, key: str | None, state: Any) -> None:
    """Mark the tracked loads of the query that loaded the row of ``state``: a read of
    ``key``, or (``key`` None) one more row of a joined load."""
    rows: _Rows | None = loads.adapter.get("sqlalchemy.rows")
    if rows is None:
        return
    cls = state.class_
    for option in state.load_options:
        found = _parts_of(loads, rows, state.session_id, option)
        if found is None:
            continue
        token = id(found)
        matching = rows.types.get((token, cls))
        if matching is None:
            matching = rows.types[(token, cls)] = [
                part for part in found.values() if issubclass(cls, part.owner)
            ]
        for part in matching:
            if key is None:
                if part.joined:
                    part.rows += 1
            elif part.key == key:
                part.read_upto = len(part.loads)


def _parts_of(
    loads: ScopeEagerLoads, rows: _Rows, session_id: object, option: object
) -> _Parts | None:
    """The tracked parts of ``option`` in a session, by (class, attribute); None if none."""
    by_option = rows.options.get(session_id)
    if by_option is None:
        by_option = rows.options[session_id] = {}
    # Rows and relationship loads carry the very option objects of their query: each
    # one's token is worked out once per scope and session.
    if id(option) in by_option:
        return by_option[id(option)]
    found = by_option[id(option)] = rows.parts.get(_token(loads, session_id, option))
    return found


def _relation_loaded(loads: ScopeEagerLoads, state: Any, chain: tuple[Any, ...]) -> None:
    """Count a relationship load's statement (its load path ``chain``) for the tracked load
    of the relation it loads (found through the options it carries, those of the query
    it loads for)."""
    rows: _Rows | None = loads.adapter.get("sqlalchemy.rows")
    if rows is None or len(chain) < 2:  # a path to an entity: a polymorphic load's
        return
    session_id = state.session.hash_key
    options = loader_options(state.statement)
    # A loop's relationship loads carry the same (cached) option objects each time.
    key = (session_id, tuple(map(id, options)), id(chain[-2]), id(chain[-1]))
    if key in rows.loading:
        part = rows.loading[key]
    else:
        part = rows.loading[key] = _loaded_part(loads, rows, session_id, options, chain)
    if part is not None:
        part.rows += 1


def _loaded_part(
    loads: ScopeEagerLoads,
    rows: _Rows,
    session_id: object,
    options: tuple[Any, ...],
    chain: tuple[Any, ...],
) -> _Part | None:
    """The tracked part a relationship load (its ``options`` and load path ``chain``)
    counts for: that of the first option tracking the relation it loads."""
    relation = loaded_relation(chain)
    if relation is None:
        return None
    cls, key = relation
    for option in options:
        found = _parts_of(loads, rows, session_id, option)
        if not found:
            continue
        part = found.get(relation)
        if part is None:  # the option names the relation on a class the path passes
            part = next(
                (p for p in found.values() if p.key == key and issubclass(cls, p.owner)), None
            )
        if part is not None:
            return part
    return None


def _token(loads: ScopeEagerLoads, session_id: object, option: object) -> int:
    """Which tracked loads rows carrying ``option`` belong to: the option's shape in that
    session (see :func:`_session_token`), cached per option object for the scope."""
    shapes: dict[int, tuple[object, ...]] | None = loads.adapter.get("sqlalchemy.shapes")
    if shapes is None:
        shapes = loads.adapter["sqlalchemy.shapes"] = {}
    shape = shapes.get(id(option))
    if shape is None:
        shape = shapes[id(option)] = option_shape(option_parts(option))
        loads.holds.append(option)  # its id stays its own while the scope lasts
    return hash((session_id, shape))


def _session_token(session_id: object, parts: list[Part]) -> int:
    """The token of an option with ``parts`` in a session: the option's shape there. Not
    the option object itself: on a cached statement SQLAlchemy gives the rows the options
    of the statement first compiled, not those of the one executed."""
    return hash((session_id, option_shape(parts)))


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
        # first, cheapest first (no scope; no option at all; a relationship load, counted
        # where the scope tracks loads; no scope being judged).
        work = current_scope()
        if work is None:
            return
        watch: EagerWatch | None = None
        try:
            if not loader_options(state.statement):
                return
            chain = load_path(state.statement)
            if chain:  # a relationship load, or a refresh of a row loaded by one
                if work.eager is not None and not refreshes(state.statement):
                    _relation_loaded(work.eager, state, chain)
                return
            if not self._judging() or not state.statement.is_select:
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
        judges = self._judges
        if len(judges) == 1:  # one PoolWatch: no generator for any()
            return judges[0].judging()
        return any(watch.judging() for watch in judges)

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
        rows = _rows(loads)
        table = rows.table(state.bind_mapper)
        session_id = state.session.hash_key
        joined = False
        for _option, parts in found:
            tracked = rows.parts_of(session_id, parts)
            for cls, key, loader, whole, part, keep in parts:
                counted = tracked.get((cls, key))
                if counted is None:  # first in the scope: its reads are to be seen
                    if not self._watch(cls, key, loads):
                        continue  # a read could not be seen: never judged unused
                    joins = loader == "joinedload"
                    counted = tracked[(cls, key)] = _Part(cls, key, joined=joins)
                    rows.changed()  # a class may be a parent in this part too
                load = EagerLoad(
                    relation=f"{cls.__name__}.{key}",
                    option=whole,
                    loader=loader,
                    orm=SQLALCHEMY,
                    call_site=site,
                    call_path=path,
                    pool=watch.pool,
                    table=table,
                    part=part,
                    keep=keep,
                    owner=cls,
                )
                if loads.add(load):
                    counted.add(load)
                    joined = joined or counted.joined
        if joined:  # no statement of its own to count: its rows are
            self._listen(state.session, loads)

    # -- the rows ----------------------------------------------------------------------

    def _listen(self, session: Session, loads: ScopeEagerLoads) -> None:
        sessions: weakref.WeakSet[Session] | None = loads.adapter.get("sqlalchemy.sessions")
        if sessions is None:
            sessions = loads.adapter["sqlalchemy.sessions"] = weakref.WeakSet()
        elif session in sessions:
            return
        sessions.add(session)

        def loaded(_session: Session, state: Any) -> None:
            work = current_scope()
            if work is not None and work.eager is loads:
                try:
                    _note(loads, None, state)
                except Exception as exc:
                    _report(exc)

        # raw: handed the row's state, which is what is read (no instance to wrap).
        event.listen(session, "loaded_as_persistent", loaded, raw=True)
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
        watched: set[int] | None = loads.adapter.get("sqlalchemy.watched")
        if watched is None:
            watched = loads.adapter["sqlalchemy.watched"] = set()
        elif id(attribute) in watched:
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
