"""Eager loads nothing read (``unused_eager_load``), seen in Tortoise-ORM.

Tortoise has no hooks, so two seams, each paid for only where an eager load happened in
a judged scope:

* **The request**: ``QuerySet._execute`` (wrapped by
  :class:`~.instrumentation.TortoiseInstrumentation`, reversibly). Outside a scope, or
  for a query with neither ``prefetch_related`` nor ``select_related``, it hands back
  the original coroutine itself. Otherwise it notes the relations asked for
  (:func:`eager_relations`), runs the query, and keeps the rows it returned (the first
  :data:`MAX_ROWS` of the scope, strongly, until the scope ends) with the rows its
  nested prefetches loaded, found through the relations themselves.
* **The reads**: every Tortoise relation (forward or reverse foreign key, one-to-one,
  many-to-many) is a ``property`` on its model class. For as long as some open scope
  tracks a relation, that one property is replaced by one whose getter notes the read
  (counted per relation, then put back); no other attribute, model or scope pays
  anything.

What counts as read: getting the relation on a row the query loaded (``post.author``,
``author.posts``; iterating, ``len``, indexing or awaiting the container all start
there), by the application or by FastAPI's serialization of a response model. Tortoise's
own prefetch, which fills the containers through the same properties, runs while the
wrapper marks the context as loading, and is not a read. A ``Prefetch(..., to_attr=...)``
fills a plain attribute that cannot be watched: it is left out.

Every hook catches its own faults (counted as ``eager_loads``) and changes nothing
Tortoise loads or returns. Private attributes are read by :func:`eager_relations` only;
its first test, on every query of a request, is whether any eager load is asked.
"""

from __future__ import annotations

import contextvars
import threading
from collections.abc import Callable, Coroutine
from typing import Any

from poolwatch.context import current_scope
from poolwatch.queries.eager import TORTOISE, EagerLoad, ScopeEagerLoads
from poolwatch.queries.eagerwatch import COMPONENT, EagerWatch

__all__ = ["MAX_ROWS", "Chain", "eager_relations", "wrap_execute"]

# Rows of one scope kept to tell whose relation was read; reads of a row past it still
# count for every load of that relation whose rows were cut (never reported wrongly).
MAX_ROWS = 512

Chain = tuple[str, str, tuple[str, ...]]
"""One eager load as asked: (loader, the option's text, the relation names from the
queried model: ``("posts", "comments")`` for ``prefetch_related("posts__comments")``)."""

# Set while Tortoise itself runs a tracked query (its prefetch reads the relations it
# fills): nothing read then is the application's.
_loading: contextvars.ContextVar[bool] = contextvars.ContextVar(
    "poolwatch_tortoise_eager_loading", default=False
)


def eager_relations(queryset: Any) -> tuple[list[Chain], str]:
    """The eager loads a ``QuerySet`` asks for, and the connection it runs on.

    The one function reading Tortoise's private attributes for this (tested on 0.21 and
    1.1, and by a test that fails if they move): the queryset's ``_prefetch_map``
    (relation -> nested relations or ``Prefetch`` objects), ``_prefetch_queries``
    (``Prefetch`` objects, with their ``to_attr``), ``_select_related`` and ``_db``.
    """
    chains: list[Chain] = []
    prefetch = getattr(queryset, "_prefetch_map", None) or {}
    selected = getattr(queryset, "_select_related", None) or ()
    if not prefetch and not selected:
        return chains, ""  # most queries: the cheap test, before anything is built
    to_attr = {
        field
        for field, queries in (getattr(queryset, "_prefetch_queries", None) or {}).items()
        if any(attr for attr, _ in queries)
    }
    for field, nested in prefetch.items():
        if field in to_attr:
            continue
        names = [name for name in nested if isinstance(name, str)]
        for name in names or [""]:
            path = f"{field}__{name}" if name else field
            chains.append(
                ("prefetch_related", f'prefetch_related("{path}")', tuple(path.split("__")))
            )
    for path in sorted(selected):
        if isinstance(path, str):
            chains.append(("select_related", f'select_related("{path}")', tuple(path.split("__"))))
    if not chains:
        return chains, ""
    return chains, str(getattr(getattr(queryset, "_db", None), "connection_name", "") or "")


def wrap_execute(
    original: Callable[[Any], Coroutine[Any, Any, Any]], watch: Callable[[], EagerWatch | None]
) -> Callable[[Any], Coroutine[Any, Any, Any]]:
    """``QuerySet._execute``, noting the eager loads of queries in judged scopes."""
    hooks = _Hooks()

    def _execute(queryset: Any) -> Coroutine[Any, Any, Any]:
        # Every query runs this: the tests that let most of them go at once come first,
        # cheapest first (no scope; no eager load asked; no scope being judged). A query
        # Tortoise runs inside a tracked one (a nested prefetch's) is the outer query's
        # load, tracked with it under the option the application wrote.
        if current_scope() is None or _loading.get():
            return original(queryset)
        eager = None
        try:
            chains, pool = eager_relations(queryset)
            if not chains:
                return original(queryset)
            eager = watch()
            if eager is None or not eager.judging():
                return original(queryset)
            loads = eager.loads()
            if loads is None:
                return original(queryset)
            site, path = eager.where(1)
        except Exception as exc:
            eager = eager or watch()
            if eager is not None:
                eager.faults.report(COMPONENT, exc)
            return original(queryset)
        return tracked(queryset, chains, loads, eager.for_pool(pool), (site, path))

    async def tracked(
        queryset: Any,
        chains: list[Chain],
        loads: ScopeEagerLoads,
        eager: EagerWatch,
        where: tuple[str, str],
    ) -> Any:
        token = _loading.set(True)
        try:
            result = await original(queryset)
        finally:
            _loading.reset(token)
        try:
            rows = result if isinstance(result, list) else [] if result is None else [result]
            if rows:
                token = _loading.set(True)  # walking the loaded relations reads them
                try:
                    hooks.track(queryset.model, rows, chains, loads, eager, where=where)
                finally:
                    _loading.reset(token)
        except Exception as exc:
            eager.faults.report(COMPONENT, exc)
        return result

    _execute.__wrapped__ = original  # type: ignore[attr-defined]
    _execute.hooks = hooks  # type: ignore[attr-defined]
    return _execute


class _Hooks:
    """The relations watched for reads, and by how many open scopes."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._watched: dict[tuple[type, str], tuple[property, property, int]] = {}

    def watching(self) -> int:
        """How many relations are watched now (0 once every scope has ended)."""
        return len(self._watched)

    def track(
        self,
        model: type,
        rows: list[Any],
        chains: list[Chain],
        loads: ScopeEagerLoads,
        eager: EagerWatch,
        *,
        where: tuple[str, str],
    ) -> None:
        site, path = where
        table = str(getattr(getattr(model, "_meta", None), "db_table", "") or "").lower()
        for loader, option, names in chains:
            parents: list[Any] = rows
            owner = model
            for depth, name in enumerate(names):
                fields_map = owner._meta.fields_map  # type: ignore[attr-defined]
                field = fields_map.get(name)
                target = getattr(field, "related_model", None)
                if field is None or target is None:
                    break
                keep = "__".join(names[:depth])
                load = EagerLoad(
                    relation=f"{owner.__name__}.{name}",
                    option=option,
                    loader=loader,
                    orm=TORTOISE,
                    call_site=site,
                    call_path=path,
                    pool=eager.pool,
                    table=table,
                    part=f"__{name}" if depth else "",
                    keep=f'{loader}("{keep}")' if depth else "",
                    owner=owner,
                    loaded=len(parents),
                )
                if not parents or not self._watch(owner, name, loads, eager) or not loads.add(load):
                    break
                self._bind(loads, parents, load)
                if depth + 1 < len(names):  # the next part's parents: what this one loaded
                    parents = _related(parents, name)
                owner = target

    def _bind(self, loads: ScopeEagerLoads, rows: list[Any], load: EagerLoad) -> None:
        kept: dict[int, Any] | None = loads.adapter.get("tortoise.rows")
        if kept is None:
            kept = loads.adapter["tortoise.rows"] = {}
        for row in rows:
            if id(row) not in kept:
                if len(kept) >= MAX_ROWS:
                    cut = loads.adapter.setdefault("tortoise.cut", {})
                    cut.setdefault((load.owner, load.attribute), []).append(load)
                    return
                kept[id(row)] = row  # held until the scope ends: its id stays its own
            loads.bind(id(row), [load])

    # -- the reads ---------------------------------------------------------------------

    def _watch(self, model: type, name: str, loads: ScopeEagerLoads, eager: EagerWatch) -> bool:
        original = model.__dict__.get(name)
        key = (model, name)
        watched: set[tuple[type, str]] | None = loads.adapter.get("tortoise.watched")
        if watched is None:
            watched = loads.adapter["tortoise.watched"] = set()
        elif key in watched:
            return True
        with self._lock:
            known = self._watched.get(key)
            if known is None:
                if not isinstance(original, property) or original.fget is None:
                    return False
                replacement = _watched_property(original, name, eager)
                setattr(model, name, replacement)
                known = (original, replacement, 0)
            self._watched[key] = (known[0], known[1], known[2] + 1)
        watched.add(key)
        loads.releases.append(lambda: self._unwatch(key, eager))
        return True

    def _unwatch(self, key: tuple[type, str], eager: EagerWatch) -> None:
        try:
            with self._lock:
                original, replacement, count = self._watched[key]
                if count > 1:
                    self._watched[key] = (original, replacement, count - 1)
                    return
                del self._watched[key]
                model, name = key
                if model.__dict__.get(name) is replacement:  # not set again by Tortoise
                    setattr(model, name, original)
        except Exception as exc:
            eager.faults.report(COMPONENT, exc)


def _watched_property(original: property, name: str, eager: EagerWatch) -> property:
    getter: Callable[[Any], Any] = original.fget  # type: ignore[assignment]

    def get(instance: Any) -> Any:
        work = current_scope()
        loads = None if work is None else work.eager
        if loads is not None and not _loading.get():
            try:
                _note_read(loads, name, instance)
            except Exception as exc:
                eager.faults.report(COMPONENT, exc)
        return getter(instance)

    return property(get, original.fset, original.fdel, original.__doc__)


def _note_read(loads: ScopeEagerLoads, name: str, instance: Any) -> None:
    tracked = loads.by_token.get(id(instance))
    if tracked is not None:
        kept = loads.adapter.get("tortoise.rows", {})
        if kept.get(id(instance)) is instance:
            for load in tracked:
                if load.attribute == name:
                    load.read = True
            return
    cut = loads.adapter.get("tortoise.cut")
    if cut:
        for load in cut.get((type(instance), name), ()):
            load.read = True


def _related(parents: list[Any], name: str) -> list[Any]:
    """The rows a relation of ``parents`` holds, as the prefetch left them."""
    found: list[Any] = []
    for parent in parents:
        value: Any = getattr(parent, name, None)
        if hasattr(value, "related_objects"):  # reverse foreign key, many-to-many
            found.extend(value.related_objects)
        elif hasattr(value, "_meta"):  # a fetched forward relation: the row itself
            found.append(value)
        if len(found) >= MAX_ROWS:
            break
    return found
