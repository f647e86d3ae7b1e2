"""Wiring SQLAlchemy engines: each engine instrumented under a pool name, and the name
handed on when its engine is disposed or collected (an app that builds an engine per
test instruments each one under the same name)."""

from __future__ import annotations

import functools
import weakref
from collections.abc import Mapping
from typing import Any

from poolwatch.agent.core import AgentCore, EnginePool
from poolwatch.errors import ConfigError
from poolwatch.queries.frames import register_relation_namer
from poolwatch.queries.suggestions import register_pool
from poolwatch.sizing.appname import new_tag
from poolwatch.sizing.settings import Autosize

__all__ = ["SQLAlchemyWiring"]


def _engine_collected(
    watch: weakref.ref[SQLAlchemyWiring], pool: str, instrumentation: Any
) -> None:
    """An engine the app let go was collected, or its automatic instrumentation gave way
    to an explicit one: its pool name is free, its gauges gone. (Weakly bound: a
    module-level engine must not keep each PoolWatch of a test alive.)"""
    owner = watch()
    if owner is None:
        return
    current = owner._engines.get(pool)
    if current is not None and current.instrumentation is instrumentation:
        try:
            owner._release_pool(pool)
        except Exception as exc:
            owner.faults.report("sqlalchemy", exc)


class SQLAlchemyWiring(AgentCore):
    """``instrument_sqlalchemy`` and the pool names of engines."""

    def instrument_sqlalchemy(
        self,
        engine: Any,
        *,
        pool: str = "main",
        autosize: Autosize | bool | Mapping[str, Any] | None = None,
        automatic: bool = False,
    ) -> None:
        """Instrument a SQLAlchemy ``Engine`` or ``AsyncEngine``; ``pool`` is its label.

        ``autosize`` (see :meth:`instrument_tortoise`) needs a ``QueuePool`` (the default
        pool of a server database): its effective size then moves between ``min`` and
        ``pool_size + max_overflow``. The acquire timeout (``acquire_timeout``) applies to
        autosize's own wait; SQLAlchemy's ``pool_timeout`` still bounds the pool's.

        ``automatic=True`` is how ``poolwatch run`` calls it: an engine that any PoolWatch
        instruments already is left alone, and an explicit call later on this engine (of
        this PoolWatch or another, under any name) takes over.
        """
        sizing = Autosize.coerce(autosize)
        if not self.settings.enabled:
            return
        if not isinstance(pool, str) or not pool:
            raise ConfigError("pool", pool, "must be a non-empty string")
        from sqlalchemy.engine import Engine

        from poolwatch.adapters.sqlalchemy import (
            SQLAlchemyInstrumentation,
            pool_capacity,
            postgres_limits_reader,
            taggable,
        )
        from poolwatch.adapters.sqlalchemy.relations import (
            LAZY_LOADER_MODULE,
            lazy_loaded_relation,
            sqlalchemy_relations,
        )

        sync_engine = getattr(engine, "sync_engine", engine)
        if not isinstance(sync_engine, Engine):  # an AsyncEngine wraps one
            # Before any series is made: a failed call leaves nothing behind.
            raise ConfigError(
                "engine",
                type(engine).__name__,
                "must be a SQLAlchemy Engine or AsyncEngine (create_engine(), "
                "create_async_engine())",
            )
        sizable, ceiling = pool_capacity(getattr(sync_engine, "pool", None))
        if sizing is not None and not sizable:
            raise ConfigError(
                "autosize",
                autosize,
                f"needs a QueuePool; engine {pool!r} has a "
                f"{type(getattr(sync_engine, 'pool', None)).__name__}",
            )
        if sizing is not None:
            sizing.bounds(ceiling)  # max unknown with unlimited overflow: fail now
        if automatic and SQLAlchemyInstrumentation.owner_of(sync_engine) is not None:
            return  # instrumented already, explicitly or automatically: that one stays
        if self._name_taken(pool, sync_engine, sizing, automatic):
            return  # this very engine, instrumented so already: nothing to add
        existed = pool in self._observers
        instrumentation = SQLAlchemyInstrumentation(
            engine,
            self.pool_events(pool),
            self.faults,
            automatic=automatic,
            eager=self._eager.for_pool(pool),
        )
        # An explicit instrumentation of this engine took over: the name is free.
        instrumentation.on_yield = functools.partial(
            _engine_collected, weakref.ref(self), pool, instrumentation
        )
        if sizing is not None:
            if sizing.tags_connections and taggable(engine):
                instrumentation.tag = new_tag()

            instrumentation.gate = self.guards.gate_for(
                self._observers[pool],
                autosize=sizing,
                pool_max=ceiling,
                open_connections=instrumentation.open_connections,
                read_limits=postgres_limits_reader(engine),
                tag=instrumentation.tag,
                threads=not sync_engine.dialect.is_async,
            )
        try:
            instrumentation.install()
        except BaseException:
            if not existed:  # leave no empty pool series behind a failed install
                self._observers.pop(pool, None)
            self.guards.forget(pool)
            raise
        self.set_pool_probe(pool, instrumentation.probe)
        register_pool(pool, "sqlalchemy", sqlalchemy_relations)
        register_relation_namer(LAZY_LOADER_MODULE, lazy_loaded_relation)
        self._activate()
        self._engines[pool] = EnginePool(instrumentation, sizing)
        if pool not in self._pool_undo:
            self._undo.append(functools.partial(self._release_pool, pool))
        self._pool_undo[pool] = [
            instrumentation.uninstall,
            lambda: self._forget_probe(pool),
            lambda: self.guards.forget(pool),
        ]
        watch = weakref.ref(self)
        weakref.finalize(sync_engine, _engine_collected, watch, pool, instrumentation)

    def _name_taken(
        self, pool: str, engine: Any, sizing: Autosize | None, automatic: bool = False
    ) -> bool:
        """Whether ``engine`` is already instrumented as ``pool`` (True: nothing to do),
        after handing the name on if its last engine is done with; raises if another
        engine still uses the name.

        An app that builds an engine per test (and disposes it) instruments each one
        under the same name; an app factory called per test instruments the same
        module-level engine again. Neither may fail, nor pile up series.
        """
        previous = self._engines.get(pool)
        if previous is None:
            if pool in self.pools.probes:  # set by hand (set_pool_probe): not an engine's
                raise ConfigError("pool", pool, "is already a pool of this PoolWatch")
            return False
        if previous.instrumentation.engine is engine:
            if previous.instrumentation.automatic and not automatic:
                self._release_pool(pool)  # instrumented again as the app asks
                return False
            if previous.sizing != sizing:
                raise ConfigError(
                    "autosize",
                    sizing,
                    f"differs from what engine {pool!r} was instrumented with "
                    f"({previous.sizing}); instrument an engine with one setting",
                )
            return True
        observer = self._observers.get(pool)
        idle = observer is None or (observer.checked_out() == 0 and observer.pending() == 0)
        if not (previous.instrumentation.gone() and idle):
            raise ConfigError(
                "pool",
                pool,
                "is the name of another engine still in use; give each engine its own name "
                "(an engine disposed, or garbage-collected, hands its name on)",
            )
        self._release_pool(pool)
        return False

    def _release_pool(self, pool: str) -> None:
        """Undo what instrumenting pool ``pool``'s engine did (its observer and series
        stay: the name goes on)."""
        self._engines.pop(pool, None)
        for undo in reversed(self._pool_undo.pop(pool, [])):
            undo()
